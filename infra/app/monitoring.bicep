// Log Analytics workspace + workspace-based Application Insights with local (instrumentation-key)
// auth disabled: the app ingests with its managed identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING
// + Monitoring Metrics Publisher, see rbac.bicep), and the status function reads the same tables
// (AppRequests, AppDependencies, …) from the workspace with Log Analytics Reader.
param location string
param tags object = {}
param logAnalyticsName string
param applicationInsightsName string

@description('Days of telemetry kept. 30 is the free retention of the workspace.')
param retentionInDays int = 30

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: 'logAnalytics'
  params: {
    name: logAnalyticsName
    location: location
    tags: tags
    dataRetention: retentionInDays
  }
}

module applicationInsights 'br/public:avm/res/insights/component:0.6.0' = {
  name: 'applicationInsights'
  params: {
    name: applicationInsightsName
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true // Entra ID ingestion only
  }
}

// Read back after creation for the workspace's customer id (the GUID LogsQueryClient wants).
resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
  dependsOn: [
    logAnalytics
  ]
}

output logAnalyticsName string = logAnalytics.outputs.name
output logAnalyticsId string = logAnalytics.outputs.resourceId
output logAnalyticsCustomerId string = workspace.properties.customerId
output applicationInsightsName string = applicationInsights.outputs.name
output applicationInsightsId string = applicationInsights.outputs.resourceId
output applicationInsightsConnectionString string = applicationInsights.outputs.connectionString
