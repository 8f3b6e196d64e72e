// The Functions app: Flex Consumption (FC1), Python 3.11, user-assigned managed identity, every
// app setting that shared/settings.py reads. Settings that exist only for the local stack (the
// Vision key, the Azurite connection string) are deliberately absent — tests/unit/test_infra.py
// lists them with the reason and fails when a new setting is neither here nor there.
param name string
param location string = resourceGroup().location
param tags object = {}
param appServicePlanId string
param storageAccountName string
param deploymentStorageContainerName string
param identityId string
param identityClientId string
param applicationInsightsName string
param logAnalyticsName string
param visionEndpoint string
@allowed([
  'F0'
  'S1'
])
param visionTier string
param visionFeatures string
param visionRateLimitPerSecond string = ''
param imagesContainer string
param resultsContainer string
param failedContainer string
param parkedContainer string
param statusContainer string

@description('Calls per month the quota check measures against: F0\'s free volume, or your S1 budget.')
param quotaMonthlyCalls int = 5000

@description('APP_VERSION override; empty = the version stamped into the deployed package (shared/version.txt), so the version shown is the code that runs.')
param appVersion string = ''
param maximumInstanceCount int = 10
param instanceMemoryMB int = 2048

@description('Flex Consumption site update strategy: RollingUpdate (preview) drains instances in batches so in-flight executions finish; Recreate restarts every instance at once. See docs/deploy.md#rolling-updates.')
param rollingUpdates bool = true

@description('Path the platform health check calls; empty = no platform health check (see docs/deploy.md#health-check-path).')
param healthCheckPath string = ''

@description('Hash blob names in telemetry (TELEMETRY_HASH_BLOB_NAMES).')
param telemetryHashBlobNames bool = false

@description('Log Analytics query API endpoint (LOGS_QUERY_ENDPOINT); the public cloud one by default.')
// environment() has no Log Analytics query endpoint; sovereign clouds pass theirs.
#disable-next-line no-hardcoded-env-urls
param logsQueryEndpoint string = 'https://api.loganalytics.io'

// azd deploys the `api` service from azure.yaml to the app carrying this tag.
var serviceName = 'api'

resource stg 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

// BEGIN app settings — parsed by tests/unit/test_infra.py; keep one `KEY: value` per line.
var appSettings = {
  // Host storage, identity-based (no connection string, the account has shared keys disabled).
  // Blob: trigger reads, receipts, leases, deployment; queue: webjobs-blobtrigger-poison.
  AzureWebJobsStorage__blobServiceUri: stg.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: stg.properties.primaryEndpoints.queue
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // DefaultAzureCredential (Vision, Log Analytics) picks the user-assigned identity by this id.
  AZURE_CLIENT_ID: identityClientId

  // Telemetry: shared/telemetry.py configures Azure Monitor itself, so the worker must not
  // (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true would export every span and log twice).
  // Ingestion is Entra-only (disableLocalAuth): the exporter authenticates as the identity.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'false'
  // Every item is kept: status numbers and alerts count requests exactly.
  TELEMETRY_SAMPLING_RATIO: '1'
  TELEMETRY_LIVE_METRICS: 'true'
  // Blob names are user data; set 'true' when they may carry personal data.
  TELEMETRY_HASH_BLOB_NAMES: telemetryHashBlobNames ? 'true' : 'false'
  // AppRoleName of every row: the app's name, stable across instances and deployments.
  TELEMETRY_ROLE_NAME: name
  // Empty = the exporter's default temp folder (writable on Flex Consumption).
  TELEMETRY_STORAGE_DIRECTORY: ''
  TELEMETRY_STORAGE_RETRY_SECONDS: '60'
  // Same as host.json extensions.blobs.poisonBlobThreshold.
  TELEMETRY_POISON_AFTER_ATTEMPTS: '5'
  // What a killed instance can lose: the spans/logs of the last second, the metrics of the
  // last 15 s (the SDK's own variables; its defaults are 5 s, 5 s and 60 s). A normal exit
  // flushes everything within TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS. See docs/telemetry.md.
  OTEL_BSP_SCHEDULE_DELAY: '1000'
  OTEL_BLRP_SCHEDULE_DELAY: '1000'
  OTEL_METRIC_EXPORT_INTERVAL: '15000'
  TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS: '5'

  // Status / quota queries read the workspace behind Application Insights.
  LOGS_WORKSPACE_ID: workspace.properties.customerId
  LOGS_QUERY_ENDPOINT: logsQueryEndpoint

  // Azure AI Vision (Entra auth through the custom subdomain; VISION_KEY stays unset).
  VISION_ENDPOINT: visionEndpoint
  VISION_FEATURES: visionFeatures
  VISION_LANGUAGE: 'en'
  VISION_MODEL_VERSION: ''
  VISION_TIER: visionTier
  VISION_RATE_LIMIT_PER_SECOND: visionRateLimitPerSecond
  VISION_RATE_BURST: '1'
  VISION_CONNECT_TIMEOUT_SECONDS: '5'
  VISION_TIMEOUT_SECONDS: '30'
  VISION_MAX_RETRIES: '4'
  VISION_BACKOFF_BASE_SECONDS: '0.5'
  VISION_BACKOFF_MAX_SECONDS: '20'
  VISION_MAX_RETRY_AFTER_SECONDS: '60'
  // Adaptive rate (the instances learn one limit together through heartbeats in the status
  // container), retry budget and breaker.
  VISION_RATE_MODE: 'adaptive'
  VISION_RETRY_BUDGET_RATIO: '0.2'
  VISION_BREAKER_FAILURES: '5'
  VISION_PROBE_INTERVAL_SECONDS: '5'
  VISION_FLEET_HEARTBEAT_SECONDS: '2'

  // Preprocessing (docs/pipeline.md).
  PREPROCESS_MAX_DIMENSION: '2048'
  PREPROCESS_JPEG_QUALITY: '90'
  PREPROCESS_MAX_PIXELS: '50000000'
  PREPROCESS_MAX_INPUT_BYTES: '67108864'

  // Containers; IMAGES_CONTAINER is also resolved by the host in the trigger path.
  IMAGES_CONTAINER: imagesContainer
  RESULTS_CONTAINER: resultsContainer
  FAILED_CONTAINER: failedContainer
  PARKED_CONTAINER: parkedContainer
  STATUS_CONTAINER: statusContainer
  // Blobs parked during a Vision outage are re-driven on this schedule once it answers.
  REDRIVE_SCHEDULE: '*/10 * * * * *'
  REDRIVE_BATCH: '200'

  // Synthetic probes and the quota check (NCRONTAB, seconds first; the host resolves %…%).
  PROBE_SCHEDULE: '0 */5 * * * *'
  PROBE_E2E_SCHEDULE: '30 */10 * * * *'
  QUOTA_SCHEDULE: '0 7 * * * *'
  PROBE_TIMEOUT_SECONDS: '10'
  PROBE_MAX_RETRIES: '0'
  PROBE_E2E_DEADLINE_SECONDS: '120'
  PROBE_E2E_POLL_SECONDS: '2'
  // Reserved for the e2e probe's uploads; only blobs carrying its metadata marker are synthetic
  // traffic or ever deleted by it, so a user's upload here still counts and stays.
  PROBE_E2E_PREFIX: 'synthetic/probe/'
  PROBE_RUN_LOCATION: location
  HEALTH_LOCK_LEASE_SECONDS: '60'
  QUOTA_MONTHLY_CALLS: string(quotaMonthlyCalls)
  // Empty = the tier's documented limit (F0 20/min, S1 10/s).
  QUOTA_TPS_LIMIT: ''
  QUOTA_WARN_THRESHOLDS: '0.8,0.95'

  // Status endpoint and alert thresholds (the same values render into the log alert rules).
  ANALYSIS_SLO_TARGET: '0.99'
  ALERT_ERROR_RATE_THRESHOLD: '0.05'
  ALERT_MIN_REQUESTS: '5'
  LATENCY_BASELINE_P95_MS: '3000'
  ALERT_LATENCY_FACTOR: '2'
  ALERT_AVAILABILITY_THRESHOLD_PCT: '90'
  ALERT_THROTTLE_RATE_THRESHOLD: '0.1'
  ALERT_QUOTA_FORECAST_THRESHOLD: '1'
  STATUS_FRESHNESS_MAX_AGE_SECONDS: '900'
  // One report per instance per TTL; 3 of the identity's 5 concurrent Log Analytics queries.
  STATUS_CACHE_TTL_SECONDS: '30'
  STATUS_WAIT_SECONDS: '1.5'
  STATUS_QUERY_TIMEOUT_SECONDS: '10'
  STATUS_QUERY_CONCURRENCY: '3'
  APP_VERSION: appVersion

  // Periodic tuning review (docs/tuning.md): recommend by default; 'apply' moves runtime
  // tunables one bounded step per review through the overlay in the status container.
  TUNING_MODE: 'recommend'
  TUNING_SCHEDULE: '0 15 3 * * *'
  TUNING_WINDOW_HOURS: '24'
  TUNING_OVERLAY_TTL_SECONDS: '60'
  TUNING_MIN_SAMPLES: '30'
  TUNING_REVERT_P95_TOLERANCE: '0.2'
  DRIFT_DESCRIPTORS: 'true'
  DRIFT_WINDOW_MINUTES: '15'
  DRIFT_BASELINE_HOURS: '168'
  DRIFT_PSI_THRESHOLD: '0.25'
  DRIFT_MIN_IMAGES: '30'
  DRIFT_CONFIDENCE_DROP: '0.05'
}
// END app settings

module api 'br/public:avm/res/web/site:0.22.0' = {
  name: '${serviceName}-flex-consumption'
  params: {
    kind: 'functionapp,linux'
    name: name
    location: location
    tags: union(tags, { 'azd-service-name': serviceName })
    serverFarmResourceId: appServicePlanId
    managedIdentities: {
      userAssignedResourceIds: [
        identityId
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${stg.properties.primaryEndpoints.blob}${deploymentStorageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      // Flex Consumption takes the runtime here; FUNCTIONS_WORKER_RUNTIME is not an app setting.
      runtime: {
        name: 'python'
        version: '3.11'
      }
      // RollingUpdate takes effect from the update after the one that sets it, and only
      // where the resource API knows it (2023-12-01 on; web/site 0.22.0 types this object from
      // Microsoft.Web/sites@2025-03-01, which scripts/infra-scan checks).
      siteUpdateStrategy: {
        type: rollingUpdates ? 'RollingUpdate' : 'Recreate'
      }
    }
    httpsOnly: true
    // healthCheckPath only when set (a typed string property takes no null).
    siteConfig: union(
      {
        alwaysOn: false
        minTlsVersion: '1.2'
        ftpsState: 'Disabled'
        http20Enabled: true
      },
      empty(healthCheckPath) ? {} : { healthCheckPath: healthCheckPath }
    )
    // Deployments authenticate with Entra ID (azd, OIDC); basic publishing credentials are off.
    basicPublishingCredentialsPolicies: [
      {
        name: 'ftp'
        allow: false
      }
      {
        name: 'scm'
        allow: false
      }
    ]
    configs: [
      {
        name: 'appsettings'
        properties: appSettings
      }
    ]
  }
}

output name string = api.outputs.name
output resourceId string = api.outputs.resourceId
output defaultHostname string = api.outputs.defaultHostname
