// Log Analytics + workspace-based Application Insights (local auth off: the app publishes with its
// managed identity, see APPLICATIONINSIGHTS_AUTHENTICATION_STRING), an action group that e-mails
// the operator, and log alert rules on what the product logs.
//
// How the product's log lines reach these queries: under the Functions host the handler writes one
// JSON object per line to stdout (tracing-subscriber JSON, event fields flattened to the top
// level, the event text under `message`); the host records each stdout line in `traces` with the
// line as `message` (category Host.Function.Console). The queries therefore pre-filter with `has`
// (cheap, uses the term index), then parse the JSON object out of `message`. The `alert` field
// carries a stable alert name and is set on no other line. The JSON is taken from the first `{`
// so a prefix added by the host, if any, does not break the parse.

@description('Log Analytics workspace name.')
param logAnalyticsName string

@description('Application Insights name.')
param appInsightsName string

@description('Action group name.')
param actionGroupName string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object

@description('Where alerts are e-mailed. Empty: the action group has no receiver (add one later).')
param alertEmail string

@description('Days Log Analytics keeps data.')
@minValue(30)
@maxValue(730)
param retentionInDays int

@description('Function failure-rate alert: percent of failed invocations over 15 minutes.')
@minValue(1)
@maxValue(100)
param failureRatePercent int

@description('Function failure-rate alert: fewest invocations in 15 minutes before the rate counts.')
@minValue(1)
param failureMinCount int

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    DisableLocalAuth: true
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'tcbridge'
    enabled: true
    emailReceivers: empty(alertEmail) ? [] : [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// The product's own alert lines (`alert` field). Each is raised once per cause by the app, so one
// matching row is enough to fire.
var parseLine = '| where indexof(message, "{") >= 0 | extend e = parse_json(substring(message, indexof(message, "{")))'

var logAlerts = [
  {
    key: 'needs-reconsent'
    title: 'tcbridge: a connection needs re-consent'
    description: 'connection_needs_reauth: the refresh token was refused (invalid_grant, consent_required, ...). An administrator must open /api/authorize?connection=<id> again.'
    severity: 1
    query: 'traces | where message has "connection_needs_reauth" ${parseLine} | where tostring(e.alert) == "connection_needs_reauth" | project timestamp, connection = tostring(e.connection), reason = tostring(e.reason)'
  }
  {
    key: 'token-refresh'
    title: 'tcbridge: token refreshes are failing'
    description: 'token_refresh_failing (5 transient failures in a row) or token_refresh_rejected (the token endpoint refused the request). Connections may need re-consent soon.'
    severity: 2
    query: 'traces | where message has "token_refresh" ${parseLine} | where tostring(e.alert) in ("token_refresh_failing", "token_refresh_rejected") | project timestamp, alert = tostring(e.alert), connection = tostring(e.connection), reason = tostring(e.reason)'
  }
  {
    key: 'app-credential'
    title: 'tcbridge: the app credential was refused'
    description: 'app_credentials_rejected: the token endpoint refused the app itself (invalid_client, a federated credential that no longer matches, an expired secret). No connection can refresh until it is fixed.'
    severity: 1
    query: 'traces | where message has "app_credentials_rejected" ${parseLine} | where tostring(e.alert) == "app_credentials_rejected" | project timestamp, error_code = tostring(e.error_code), reason = tostring(e.reason)'
  }
  {
    key: 'budget-stop'
    title: 'tcbridge: the sync stopped on a daily budget'
    description: 'The sync stopped because our TRUECONTEXT_DAILY_CALL_BUDGET is spent (class budget) or TrueContext answered 402 CallCountExpended (class call_count_expended). It resumes after 00:00 UTC.'
    severity: 2
    query: 'traces | where message has "the sync stopped" ${parseLine} | where tostring(e.message) == "the sync stopped" and tostring(e.class) in ("budget", "call_count_expended") | project timestamp, connection = tostring(e.connection), class = tostring(e.class)'
  }
  {
    key: 'cursor-stuck'
    title: 'tcbridge: a sync cursor is stuck'
    description: 'sync_stalled: a connection\'s sync has not advanced for three runs in a row.'
    severity: 2
    query: 'traces | where message has "sync_stalled" ${parseLine} | where tostring(e.alert) == "sync_stalled" | project timestamp, connection = tostring(e.connection), reason = tostring(e.reason)'
  }
  {
    key: 'poison'
    title: 'tcbridge: a pushed submission was poisoned'
    description: 'push_poisoned: a pushed submission failed QUEUE_MAX_DEQUEUE_COUNT times and moved to the poison queue. Fix the cause, then `tcbridge poison replay --all`.'
    severity: 2
    query: 'traces | where message has "push_poisoned" ${parseLine} | where tostring(e.alert) == "push_poisoned" | project timestamp, connection = tostring(e.connection), reason = tostring(e.reason)'
  }
  {
    key: 'reconsent-due'
    title: 'tcbridge: a connection must consent again soon'
    description: 'reconsent_due: an Azure AD B2C refresh token reaches the end of its sliding window (B2C_REFRESH_WINDOW_DAYS) within B2C_REAUTH_WARNING_DAYS. An administrator must open /api/authorize?connection=<id> before then.'
    severity: 3
    query: 'traces | where message has "reconsent_due" ${parseLine} | where tostring(e.alert) == "reconsent_due" | project timestamp, connection = tostring(e.connection), reason = tostring(e.reason)'
  }
  {
    key: 'token-not-stored'
    title: 'tcbridge: a refreshed token could not be stored'
    description: 'token_set_not_stored: a refresh succeeded but the new token set could not be written to Key Vault. Check the vault and the identity\'s Key Vault Secrets Officer role (`tcbridge check --online`).'
    severity: 1
    query: 'traces | where message has "token_set_not_stored" ${parseLine} | where tostring(e.alert) == "token_set_not_stored" | project timestamp, connection = tostring(e.connection), reason = tostring(e.reason)'
  }
  {
    key: 'quarantine'
    title: 'tcbridge: a submission was quarantined'
    description: 'submission_quarantined: a document TrueContext served or pushed could not be landed (refused for good); it is kept as received with the reason and the walk went on. See `tcbridge quarantine list`; after a fix, `tcbridge quarantine retry --all`.'
    severity: 2
    query: 'traces | where message has "submission_quarantined" ${parseLine} | where tostring(e.alert) == "submission_quarantined" | project timestamp, connection = tostring(e.connection), reason = tostring(e.reason)'
  }
  {
    key: 'pushes-missing'
    title: 'tcbridge: TrueContext pushes are missing'
    description: 'pushes_missing: submissions the sync landed never arrived by push within MISSED_PUSH_GRACE_SECONDS, for the forms named. Check the TrueContext HTTP Data Destination of those forms, its credential, and the FormSpace problem contact\'s mail. The sync catches up meanwhile.'
    severity: 3
    query: 'traces | where message has "pushes_missing" ${parseLine} | where tostring(e.alert) == "pushes_missing" | project timestamp, connection = tostring(e.connection), reason = tostring(e.reason)'
  }
]

resource logAlertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for a in logAlerts: {
  name: 'tcbridge-${a.key}-${appInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: a.title
    description: a.description
    severity: a.severity
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: a.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}]

// Function failure rate: every invocation (HTTP, timer, queue) is a row in `requests`. Not
// counted as failures: `status`, whose 424 means "an operator should look" (the alerts above say
// why), and HTTP 4xx answers (a caller's mistake or a refused push, counted in status).
var failureQuery = 'requests | where name != "status" | extend code = toint(resultCode) | summarize total = count(), failed = countif(success == false and not(code between (400 .. 499))) | where total >= ${failureMinCount} | extend failure_percent = 100.0 * failed / total | where failure_percent > ${failureRatePercent}'

resource failureRateRule 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'tcbridge-failure-rate-${appInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'tcbridge: function failure rate above ${failureRatePercent}%'
    description: 'More than ${failureRatePercent}% of function invocations failed over 15 minutes (at least ${failureMinCount} invocations; status and HTTP 4xx excluded).'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: failureQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output workspaceId string = workspace.id
output appInsightsName string = appInsights.name
output appInsightsId string = appInsights.id
output appInsightsConnectionString string = appInsights.properties.ConnectionString
