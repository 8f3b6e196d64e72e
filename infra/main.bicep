// VisionOps on Azure: the Functions app (Flex Consumption, Python 3.11), its storage and Event Grid
// system topic, Azure AI Vision, Log Analytics + Application Insights, role assignments, alerts,
// the availability test and the workbook. Shape follows the azd Functions quickstart templates:
// subscription scope, one resource group, pinned Azure Verified Modules, identity-based
// connections only (no keys or connection strings with secrets anywhere), UPPER_SNAKE outputs.
//
// The Event Grid *subscription* for the blob trigger is not created here: its webhook needs the
// host's `blobs_extension` system key, which exists only once the code is deployed. The azd
// postdeploy hook (infra/hooks/postdeploy.sh) deploys infra/app/blob-subscription.bicep then.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used to generate a short unique hash used in all resources.')
param environmentName string

@minLength(1)
@description('Primary location for all resources. Must offer Flex Consumption.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Location of the Azure AI Vision account. Caption / denseCaptions exist only in some regions; empty = same as location.')
param visionLocation string = ''

@description('Azure AI Vision pricing tier: F0 (20 calls/min, free) or S1.')
@allowed([
  'F0'
  'S1'
])
param visionSkuName string = 'S1'

@description('Comma-separated Image Analysis 4.0 features (VISION_FEATURES). Add tags/objects/caption where the region supports them.')
param visionFeatures string = 'read,people,smartCrops'

@description('Client-side calls per second per instance (VISION_RATE_LIMIT_PER_SECOND); empty = the tier default per process. With N instances, set quota / N.')
param visionRateLimitPerSecond string = ''

@description('Upper bound of Flex Consumption instances. Every instance runs its own rate limiter, so this also bounds the total call rate.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 10

@description('Memory per instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('E-mail address that receives the alerts. Empty = action group without receivers (add one later).')
param alertEmail string = ''

@description('Object id of the user or service principal running azd; gets data-plane roles for uploads, replay and queries. Empty = none.')
param principalId string = ''

@description('Type of principalId.')
@allowed([
  'User'
  'ServicePrincipal'
])
param principalType string = 'User'

// Vision metric alert thresholds (AMBA metrics, 5-minute window). See docs/deploy.md#alerts for
// where each default comes from; re-baseline them after a week of real traffic.
@description('Average service-side Latency (ms) above which the Vision latency alert fires.')
param visionLatencyThresholdMs int = 4000
@description('TotalErrors in 5 minutes above which the alert fires.')
param visionTotalErrorsThreshold int = 5
@description('ServerErrors in 5 minutes above which the alert fires.')
param visionServerErrorsThreshold int = 0
@description('ClientErrors in 5 minutes above which the alert fires.')
param visionClientErrorsThreshold int = 5
@description('BlockedCalls (429) in 5 minutes above which the alert fires.')
param visionBlockedCallsThreshold int = 5
@description('SuccessRate (%) below which the alert fires.')
param visionSuccessRateThreshold int = 99

@description('Monthly call volume the quota check compares against: F0\'s free 5,000, or a budget for S1.')
param quotaMonthlyCalls int = visionSkuName == 'F0' ? 5000 : 1000000

@description('APP_VERSION override; empty = the version stamped into the package by scripts/release (what the deploy workflow uses).')
param appVersion string = ''

@description('Flex Consumption rolling updates (preview): drain instances in batches on every code or config update instead of restarting them all.')
param rollingUpdates bool = true

@description('Platform health check path; empty on Flex Consumption (see docs/deploy.md#health-check-path).')
param healthCheckPath string = ''

param resourceGroupName string = ''
param functionAppName string = ''
param storageAccountName string = ''
param visionAccountName string = ''

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = !empty(functionAppName) ? functionAppName : '${abbrs.webSitesFunctions}api-${resourceToken}'
// Flex Consumption deploys from this blob container (azd uploads the package there).
var deploymentStorageContainerName = 'app-package-${take(appName, 32)}-${take(resourceToken, 7)}'
var visionName = !empty(visionAccountName) ? visionAccountName : '${abbrs.cognitiveServicesComputerVision}${resourceToken}'
var systemTopicName = '${abbrs.eventGridSystemTopics}${resourceToken}'

// Container names are app settings too (IMAGES_CONTAINER …): one value feeds both.
var containers = {
  images: 'images'
  results: 'results'
  failed: 'failed'
  // Blob versions waiting out a Vision outage (re-driven automatically).
  parked: 'parked'
  // Probe and quota results the status function reads.
  status: 'status'
  // Event Grid parks BlobCreated events here when the app cannot take them for 24 h.
  deadLetter: 'eventgrid-deadletter'
  // Every promoted package (<version>.zip) and last-good.json: what a rollback redeploys.
  releases: 'releases'
}
// The blob trigger's poison queue; the host would create it, creating it here lets alerts and
// replay rely on it from the first minute.
var poisonQueueName = 'webjobs-blobtrigger-poison'

// Seam for issue 6 (alerts as code + workbook): its renderer writes these two files from the
// shared alert definitions and queries/*.kql. Until then they are empty and nothing is deployed.
var renderedScheduledQueryRules = loadJsonContent('alerts/scheduled-query-rules.json')
var workbookContent = loadTextContent('workbook/visionops.workbook.json')

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// The app's identity for storage, Vision, Log Analytics and App Insights ingestion.
module apiIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'apiIdentity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    skuName: 'Standard_LRS'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // Entra ID only; the app uses its managed identity
    minimumTlsVersion: 'TLS1_2'
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices' // Event Grid dead-lettering and the deployment service
    }
    blobServices: {
      containers: [
        { name: deploymentStorageContainerName, publicAccess: 'None' }
        { name: containers.images, publicAccess: 'None' }
        { name: containers.results, publicAccess: 'None' }
        { name: containers.failed, publicAccess: 'None' }
        { name: containers.parked, publicAccess: 'None' }
        { name: containers.status, publicAccess: 'None' }
        { name: containers.deadLetter, publicAccess: 'None' }
        { name: containers.releases, publicAccess: 'None' }
      ]
    }
    queueServices: {
      queues: [
        { name: poisonQueueName }
      ]
    }
  }
}

// System topic for BlobCreated events; its subscription is added after the first deploy.
module systemTopic 'br/public:avm/res/event-grid/system-topic:0.6.1' = {
  name: 'systemTopic'
  scope: rg
  params: {
    name: systemTopicName
    location: location
    tags: tags
    source: storage.outputs.resourceId
    topicType: 'Microsoft.Storage.StorageAccounts'
    managedIdentities: {
      systemAssigned: true // writes dead-lettered events into the dead-letter container
    }
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
  }
}

module vision 'app/vision.bicep' = {
  name: 'vision'
  scope: rg
  params: {
    name: visionName
    location: !empty(visionLocation) ? visionLocation : location
    tags: tags
    skuName: visionSkuName
  }
}

module appServicePlan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'appServicePlan'
  scope: rg
  params: {
    name: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    location: location
    tags: tags
    appServicePlanId: appServicePlan.outputs.resourceId
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: deploymentStorageContainerName
    identityId: apiIdentity.outputs.resourceId
    identityClientId: apiIdentity.outputs.clientId
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    visionEndpoint: vision.outputs.endpoint
    visionTier: visionSkuName
    visionFeatures: visionFeatures
    visionRateLimitPerSecond: visionRateLimitPerSecond
    imagesContainer: containers.images
    resultsContainer: containers.results
    failedContainer: containers.failed
    parkedContainer: containers.parked
    statusContainer: containers.status
    quotaMonthlyCalls: quotaMonthlyCalls
    appVersion: appVersion
    rollingUpdates: rollingUpdates
    healthCheckPath: healthCheckPath
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
}

module rbac 'rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    deadLetterContainerName: containers.deadLetter
    visionAccountName: vision.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    appPrincipalId: apiIdentity.outputs.principalId
    systemTopicPrincipalId: systemTopic.outputs.?systemAssignedMIPrincipalId ?? ''
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    alertEmail: alertEmail
    visionAccountId: vision.outputs.resourceId
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
    healthUrl: 'https://${api.outputs.defaultHostname}/api/health'
    visionLatencyThresholdMs: visionLatencyThresholdMs
    visionTotalErrorsThreshold: visionTotalErrorsThreshold
    visionServerErrorsThreshold: visionServerErrorsThreshold
    visionClientErrorsThreshold: visionClientErrorsThreshold
    visionBlockedCallsThreshold: visionBlockedCallsThreshold
    visionSuccessRateThreshold: visionSuccessRateThreshold
    scheduledQueryRules: renderedScheduledQueryRules
  }
}

module workbook 'app/workbook.bicep' = if (length(json(workbookContent).items) > 0) {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    displayName: 'VisionOps (${environmentName})'
    serializedData: workbookContent
    sourceId: monitoring.outputs.applicationInsightsId
  }
}

// azd reads these into the environment (.azure/<env>/.env); the postdeploy hook and docs use them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = 'https://${api.outputs.defaultHostname}'
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.primaryBlobEndpoint
output IMAGES_CONTAINER string = containers.images
output RESULTS_CONTAINER string = containers.results
output FAILED_CONTAINER string = containers.failed
output EVENTGRID_DEADLETTER_CONTAINER string = containers.deadLetter
output EVENTGRID_SYSTEM_TOPIC_NAME string = systemTopic.outputs.name
output VISION_ENDPOINT string = vision.outputs.endpoint
output VISION_ACCOUNT_NAME string = vision.outputs.name
output LOGS_WORKSPACE_ID string = monitoring.outputs.logAnalyticsCustomerId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
// Where the deploy workflow sends its deployment markers (Entra auth; local auth is disabled).
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.applicationInsightsConnectionString
output RELEASES_CONTAINER string = containers.releases
output ACTION_GROUP_ID string = alerts.outputs.actionGroupId
