// Alerting: one action group, AMBA metric alerts on the Vision account, a standard availability
// test on /api/health with its alert, and the scheduled query rules rendered from the shared alert
// definitions (issue 6: the renderer writes infra/alerts/scheduled-query-rules.json; each entry has
// the shape of scheduledQueryRuleType below). Runbooks: docs/deploy.md#alerts.
param location string
param tags object = {}
param resourceToken string
param alertEmail string = ''
param visionAccountId string
param applicationInsightsId string
param logAnalyticsWorkspaceId string
param healthUrl string

param visionLatencyThresholdMs int
param visionTotalErrorsThreshold int
param visionServerErrorsThreshold int
param visionClientErrorsThreshold int
param visionBlockedCallsThreshold int
param visionSuccessRateThreshold int

@description('Availability test locations that must fail at once before the availability alert fires.')
param availabilityFailedLocations int = 2

// Shape of each scheduled query rule (one object per alert definition; tests/unit/test_infra.py
// checks infra/alerts/scheduled-query-rules.json against it, since no Bicep compiler runs here):
//   name                 string  resource name, e.g. 'sqr-error-rate'
//   displayName          string
//   description          string  includes the runbook link (docs/…#section)
//   severity             int     0 (critical) … 4
//   evaluationFrequency  string  ISO 8601, e.g. 'PT5M'
//   windowSize           string  ISO 8601 look-back of the query, e.g. 'PT15M'
//   autoMitigate         bool
//   criterion            object  one ARM scheduledQueryRules condition, passed through as is:
//     query                string  KQL from queries/<file>.kql, over the workspace tables
//     timeAggregation      string  Average | Count | Maximum | Minimum | Total
//     metricMeasureColumn  string  only for non-Count aggregations
//     operator             string  Equals | GreaterThan | GreaterThanOrEqual | LessThan | LessThanOrEqual
//     threshold            number
//     failingPeriods       object  {numberOfEvaluationPeriods, minFailingPeriodsToAlert}
//     dimensions           array   optional: [{name, operator: 'Include', values: ['*']}], one
//                                  alert per value of that column (e.g. the drifted descriptor)
// (A user-defined Bicep type would tell the compiler this, but the Bicep parser checkov uses
// cannot read type declarations, and a file it cannot parse is a file it does not scan.)
@description('Scheduled query rules rendered from the shared alert definitions; empty until issue 6 renders them.')
param scheduledQueryRules array = []

var visionMetricNamespace = 'Microsoft.CognitiveServices/accounts'

// AMBA's Cognitive Services alerts (5-minute window, 1-minute frequency), thresholds from params.
var visionMetricAlerts = [
  {
    key: 'latency'
    metric: 'Latency'
    aggregation: 'Average'
    operator: 'GreaterThan'
    threshold: visionLatencyThresholdMs
    severity: 2
    description: 'Average Image Analysis latency above the measured baseline (not AMBA\'s 90 ms, which image analysis always exceeds).'
  }
  {
    key: 'total-errors'
    metric: 'TotalErrors'
    aggregation: 'Total'
    operator: 'GreaterThan'
    threshold: visionTotalErrorsThreshold
    severity: 2
    description: 'Vision calls failing (any status >= 400).'
  }
  {
    key: 'server-errors'
    metric: 'ServerErrors'
    aggregation: 'Total'
    operator: 'GreaterThan'
    threshold: visionServerErrorsThreshold
    severity: 1
    description: 'Vision returns 5xx: service-side incident; the pipeline retries, then poisons.'
  }
  {
    key: 'client-errors'
    metric: 'ClientErrors'
    aggregation: 'Total'
    operator: 'GreaterThan'
    threshold: visionClientErrorsThreshold
    severity: 3
    description: 'Vision rejects requests (4xx other than 429): images the preprocessing let through, auth or config.'
  }
  {
    key: 'blocked-calls'
    metric: 'BlockedCalls'
    aggregation: 'Total'
    operator: 'GreaterThan'
    threshold: visionBlockedCallsThreshold
    severity: 2
    description: 'Vision throttles (429): the rate limiter is above the tier quota or too many instances.'
  }
  {
    key: 'success-rate'
    metric: 'SuccessRate'
    aggregation: 'Average'
    operator: 'LessThan'
    threshold: visionSuccessRateThreshold
    severity: 1
    description: 'Share of successful Vision calls below target.'
  }
]

var emailReceivers = [
  {
    name: 'operator'
    emailAddress: alertEmail
    useCommonAlertSchema: true
  }
]

module actionGroup 'br/public:avm/res/insights/action-group:0.7.0' = {
  name: 'actionGroup'
  params: {
    name: 'ag-visionops-${resourceToken}'
    groupShortName: 'visionops'
    location: 'global'
    tags: tags
    emailReceivers: empty(alertEmail) ? [] : emailReceivers
  }
}

module visionAlerts 'br/public:avm/res/insights/metric-alert:0.4.0' = [
  for a in visionMetricAlerts: {
    name: 'ma-vision-${a.key}'
    params: {
      name: 'ma-vision-${a.key}-${resourceToken}'
      location: 'global'
      tags: tags
      alertDescription: a.description
      severity: a.severity
      scopes: [
        visionAccountId
      ]
      evaluationFrequency: 'PT1M'
      windowSize: 'PT5M'
      autoMitigate: true
      criteria: {
        'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
        allof: [
          {
            criterionType: 'StaticThresholdCriterion'
            name: a.metric
            metricName: a.metric
            metricNamespace: visionMetricNamespace
            operator: a.operator
            threshold: a.threshold
            timeAggregation: a.aggregation
          }
        ]
      }
      actions: [
        actionGroup.outputs.resourceId
      ]
    }
  }
]

// Standard availability test: GET /api/health (anonymous) from five regions every 5 minutes.
module healthTest 'br/public:avm/res/insights/webtest:0.3.1' = {
  name: 'healthTest'
  params: {
    name: 'webtest-health-${resourceToken}'
    webTestName: 'VisionOps /api/health'
    syntheticMonitorId: 'webtest-health-${resourceToken}'
    location: location
    tags: tags
    appInsightResourceId: applicationInsightsId
    kind: 'standard'
    frequency: 300
    timeout: 30
    retryEnabled: true
    request: {
      RequestUrl: healthUrl
      HttpVerb: 'GET'
      ParseDependentRequests: false
    }
    validationRules: {
      ExpectedHttpStatusCode: 200
      SSLCheck: true
      SSLCertRemainingLifetimeCheck: 7
    }
  }
}

module healthAlert 'br/public:avm/res/insights/metric-alert:0.4.0' = {
  name: 'ma-health'
  params: {
    name: 'ma-health-${resourceToken}'
    location: 'global'
    tags: tags
    alertDescription: '/api/health fails from ${availabilityFailedLocations} or more test locations.'
    severity: 1
    scopes: [
      applicationInsightsId
      healthTest.outputs.resourceId
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.WebtestLocationAvailabilityCriteria'
      componentResourceId: applicationInsightsId
      webTestResourceId: healthTest.outputs.resourceId
      failedLocationCount: availabilityFailedLocations
    }
    actions: [
      actionGroup.outputs.resourceId
    ]
  }
}

module logAlerts 'br/public:avm/res/insights/scheduled-query-rule:0.5.1' = [
  for rule in scheduledQueryRules: {
    name: rule.name
    params: {
      name: rule.name
      alertDisplayName: rule.displayName
      alertDescription: rule.description
      location: location
      tags: tags
      kind: 'LogAlert'
      scopes: [
        logAnalyticsWorkspaceId
      ]
      severity: rule.severity
      evaluationFrequency: rule.evaluationFrequency
      windowSize: rule.windowSize
      autoMitigate: rule.autoMitigate
      criterias: {
        allOf: [
          rule.criterion
        ]
      }
      actions: [
        actionGroup.outputs.resourceId
      ]
    }
  }
]

output actionGroupId string = actionGroup.outputs.resourceId
output healthTestId string = healthTest.outputs.resourceId
output scheduledQueryRuleNames array = [for (rule, i) in scheduledQueryRules: logAlerts[i].outputs.name]
