// Every role assignment of the deployment, in one place. Each GUID is an Azure built-in role,
// named in its comment (tests/unit/test_infra.py checks each name against its GUID). Scopes are
// the narrowest resource that works: no assignment at resource-group or subscription scope.
param storageAccountName string
param deadLetterContainerName string
param visionAccountName string
param applicationInsightsName string
param logAnalyticsName string

@description('Principal id of the app\'s user-assigned managed identity.')
param appPrincipalId string

@description('Principal id of the Event Grid system topic\'s identity (dead-lettering). Empty = skip.')
param systemTopicPrincipalId string = ''

@description('Optional developer or CI principal that uploads images, replays and queries telemetry.')
param userPrincipalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
param userPrincipalType string = 'User'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
  cognitiveServicesUser: 'a97b65f3-24c7-4388-baec-2e87135dc908' // Cognitive Services User
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
  logAnalyticsReader: '73c42c96-874c-492b-b04d-ab87d138a893' // Log Analytics Reader
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vision 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: visionAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

var deadLetterContainerId = '${storageAccount.id}/blobServices/default/containers/${deadLetterContainerName}'

// What the app identity needs, and why.
var appAssignments = [
  {
    // Host storage (leases, receipts, deployment package) and the pipeline's own containers.
    scope: storageAccount.id
    role: roles.storageBlobDataOwner
    what: 'Functions host storage, trigger reads, result and failure documents'
  }
  {
    // The blob trigger's poison queue (host writes, replay reads and deletes).
    scope: storageAccount.id
    role: roles.storageQueueDataContributor
    what: 'webjobs-blobtrigger-poison queue'
  }
  {
    scope: vision.id
    role: roles.cognitiveServicesUser
    what: 'Image Analysis calls with an Entra token'
  }
  {
    scope: applicationInsights.id
    role: roles.monitoringMetricsPublisher
    what: 'Entra-authenticated telemetry ingestion (disableLocalAuth)'
  }
  {
    // Read-only, and on the workspace only: the status and quota functions run queries/*.kql.
    scope: workspace.id
    role: roles.logAnalyticsReader
    what: 'status and quota queries'
  }
]

var userAssignments = [
  {
    scope: storageAccount.id
    role: roles.storageBlobDataContributor
    what: 'upload images, read results'
  }
  {
    scope: storageAccount.id
    role: roles.storageQueueDataContributor
    what: 'python -m shared.replay --poison'
  }
  {
    scope: vision.id
    role: roles.cognitiveServicesUser
    what: 'probe the Vision account by hand'
  }
  {
    scope: workspace.id
    role: roles.logAnalyticsReader
    what: 'run queries/*.kql against the workspace'
  }
  {
    // The deploy workflow's deployment markers (custom event `deployment`), Entra-authenticated.
    scope: applicationInsights.id
    role: roles.monitoringMetricsPublisher
    what: 'deployment markers'
  }
]

module appRoles 'br/public:avm/ptn/authorization/resource-role-assignment:0.1.2' = [
  for a in appAssignments: {
    name: 'app-${uniqueString(a.scope, a.role, appPrincipalId)}'
    params: {
      resourceId: a.scope
      roleDefinitionId: a.role
      principalId: appPrincipalId
      principalType: 'ServicePrincipal'
      description: 'VisionOps app: ${a.what}'
    }
  }
]

// No operator principal = an empty loop (same effect as a filtered loop, in the subset of Bicep
// that scripts/infra-scan's parser reads).
module userRoles 'br/public:avm/ptn/authorization/resource-role-assignment:0.1.2' = [
  for a in (empty(userPrincipalId) ? [] : userAssignments): {
    name: 'user-${uniqueString(a.scope, a.role, userPrincipalId)}'
    params: {
      resourceId: a.scope
      roleDefinitionId: a.role
      principalId: userPrincipalId
      principalType: userPrincipalType
      description: 'VisionOps operator: ${a.what}'
    }
  }
]

// Event Grid writes undeliverable BlobCreated events into the dead-letter container only.
module systemTopicDeadLetterRole 'br/public:avm/ptn/authorization/resource-role-assignment:0.1.2' = if (!empty(systemTopicPrincipalId)) {
  name: 'evgt-${uniqueString(deadLetterContainerId, systemTopicPrincipalId)}'
  params: {
    resourceId: deadLetterContainerId
    roleDefinitionId: roles.storageBlobDataContributor
    principalId: systemTopicPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Event Grid system topic: dead-letter BlobCreated events'
  }
}
