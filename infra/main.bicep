// truecontext-bridge: the whole Azure footprint in one resource group.
// identity -> monitoring -> storage, Key Vault -> role assignments -> Function App (site, then its
// app settings). The Entra app registration is made after this deployment by
// scripts/entra-app.sh (azd runs it as the postprovision hook): it needs the site's host name
// and the identity's principal id, and Microsoft Graph Bicep cannot be scanned by checkov
// (docs/deploy.md). Its appId comes back as oauthClientId on the next provision.
//
// Every setting the binary reads is set here (main: productSettings; modules/functionapp.bicep:
// commonSettings, epOnlySettings) or is on the deliberately-not-set list in
// scripts/check-infra.py. Secrets never appear as values: only Key Vault references.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------- deployment

@minLength(1)
@maxLength(64)
@description('azd environment name; feeds the resource names.')
param environmentName string

@description('Azure region of every resource (Flex Consumption with the custom runtime must be offered there: az functionapp list-flexconsumption-runtimes --location <region> --runtime custom).')
param location string

@description('Extra tags for every resource.')
param tags object = {}

@description('FlexConsumption (default) or ElasticPremium (EP1; see modules/functionapp.bicep for what EP needs).')
@allowed([
  'FlexConsumption'
  'ElasticPremium'
])
param planKind string = 'FlexConsumption'

@description('Most instances. Flex allows 40-1000. The app is cluster-safe at any count; TrueContext allows 3 concurrent calls per key, which TRUECONTEXT_CONCURRENCY enforces cluster-wide, so more instances do not mean more calls.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex instance memory (MB): 512 is plenty for this handler (about 8 MiB idle).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

@description('Storage replication.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_ZRS'

@description('Days a deleted blob or container can be restored.')
@minValue(1)
@maxValue(365)
param blobSoftDeleteDays int = 30

@description('Days an older version of a landed blob is kept.')
@minValue(1)
@maxValue(3650)
param blobVersionRetentionDays int = 90

@description('Blob container for the deployment package.')
param deploymentContainerName string = 'app-package'

@description('Elastic Premium only: blob name of the package in the deployment container (WEBSITE_RUN_FROM_PACKAGE).')
param epPackageBlobName string = 'functionapp.zip'

@description('Days Log Analytics keeps data.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('E-mail address the alerts go to (empty: none yet).')
param alertEmail string = ''

@description('Failure-rate alert threshold, percent of invocations over 15 minutes.')
@minValue(1)
@maxValue(100)
param failureRatePercent int = 10

@description('Failure-rate alert: fewest invocations in 15 minutes before the rate counts.')
@minValue(1)
param failureMinCount int = 10

@description('Deliveries before a queue message is poisoned. Feeds QUEUE_MAX_DEQUEUE_COUNT and the host.json override AzureFunctionsJobHost__extensions__queues__maxDequeueCount (host.json itself says 5).')
@minValue(1)
param maxDequeueCount int = 5

@description('Secret names already put into the vault by hand (for example truecontext-api-key-secret); they become Key Vault references like the secrets passed below.')
param existingVaultSecrets array = []

// ---------------------------------------------------------------- secrets (Key Vault only)

@secure()
@description('TRUECONTEXT_API_KEY_SECRET, for TRUECONTEXT_AUTH=basic. Stored in Key Vault; the app gets a reference.')
param truecontextApiKeySecret string = ''

@secure()
@description('OAUTH_CLIENT_SECRET. Normally empty: the federated credential (OAUTH_FEDERATED_CREDENTIAL=true) replaces it.')
param oauthClientSecret string = ''

@secure()
@description('WEBHOOK_BASIC_PASSWORD, for WEBHOOK_AUTH=basic (16+ characters; "old,new" during a rotation).')
param webhookBasicPassword string = ''

@secure()
@description('WEBHOOK_HEADER_VALUE, for WEBHOOK_AUTH=header (16+ characters; "old,new" during a rotation).')
param webhookHeaderValue string = ''

@secure()
@description('ALERT_WEBHOOK_URL: where alerts are POSTed (a Slack / Teams URL is itself a credential, so it lives in Key Vault).')
param alertWebhookUrl string = ''

// ---------------------------------------------------------------- OAuth (connect flow)

@description('OAUTH_PROVIDER: entra, b2c, oidc or oauth2.')
param oauthProvider string = 'entra'

@description('OAUTH_AUTHORITY. Empty: this tenant\'s v2 authority.')
param oauthAuthority string = ''

@description('OAUTH_CLIENT_ID: the app registration\'s appId (scripts/entra-app.sh prints it and sets it in the azd environment). Empty until it exists.')
param oauthClientId string = ''

@description('OAUTH_FEDERATED_CREDENTIAL: authenticate to Entra with the managed identity (no client secret). Entra only.')
@allowed([
  'true'
  'false'
])
param oauthFederatedCredential string = 'true'

@description('OAUTH_SCOPES: the TrueContext-facing scope(s), space-separated (openid offline_access are added by the app).')
param oauthScopes string = ''

@description('OAUTH_REDIRECT_URI. Empty: https://<function app host>/api/callback.')
param oauthRedirectUri string = ''

@description('OAUTH_GRANT: authorization_code or client_credentials.')
param oauthGrant string = 'authorization_code'

@description('OAUTH_AUTHORIZE_ENDPOINT (OAUTH_PROVIDER=oauth2 only).')
param oauthAuthorizeEndpoint string = ''

@description('OAUTH_TOKEN_ENDPOINT (OAUTH_PROVIDER=oauth2 only).')
param oauthTokenEndpoint string = ''

@description('OAUTH_REFRESH_ENDPOINT (OAUTH_PROVIDER=oauth2 only).')
param oauthRefreshEndpoint string = ''

@description('OAUTH_CODE_PARAM (non-standard servers).')
param oauthCodeParam string = 'code'

@description('OAUTH_REFRESH_TOKEN_PARAM (non-standard servers).')
param oauthRefreshTokenParam string = 'refresh_token'

@description('ALLOWED_TENANTS: comma-separated tenant ids allowed to connect (empty: anyone the authority lets sign in).')
param allowedTenants string = ''

@description('ALLOWED_USERS: comma-separated users allowed to connect (empty: anyone).')
param allowedUsers string = ''

// ---------------------------------------------------------------- TrueContext

@description('TRUECONTEXT_BASE_URL.')
param truecontextBaseUrl string = 'https://api.prontoforms.com/api/1.1'

@description('TRUECONTEXT_AUTH: bearer (the connection\'s access token) or basic (API key).')
@allowed([
  'bearer'
  'basic'
])
param truecontextAuth string = 'bearer'

@description('TRUECONTEXT_API_KEY_ID (with basic).')
param truecontextApiKeyId string = ''

@description('TRUECONTEXT_CONNECTION: the connection id an API key syncs as.')
param truecontextConnection string = 'default'

@description('TRUECONTEXT_CONCURRENCY: calls in flight cluster-wide (1-3).')
param truecontextConcurrency string = '3'

@description('TRUECONTEXT_DAILY_CALL_BUDGET: calls per connection per UTC day.')
param truecontextDailyCallBudget string = '2000'

@description('TRUECONTEXT_TIMEOUT_SECONDS.')
param truecontextTimeoutSeconds string = '30'

@description('TRUECONTEXT_MAX_RESPONSE_BYTES.')
param truecontextMaxResponseBytes string = '67108864'

// ---------------------------------------------------------------- sync, queues, landing

@description('SYNC_SCHEDULE (six-field NCRONTAB, UTC: Flex has no time zone setting).')
param syncSchedule string = '0 */30 * * * *'

@description('INCOMING_QUEUE_NAME (its poison queue is <name>-poison).')
param incomingQueueName string = 'incoming-submissions'

@description('LANDED_QUEUE_NAME.')
param landedQueueName string = 'landed-submissions'

@description('SUBMISSIONS_CONTAINER.')
param submissionsContainerName string = 'submissions'

@description('SYNC_BACKFILL_DAYS.')
param syncBackfillDays string = '30'

@description('SYNC_OVERLAP_SECONDS.')
param syncOverlapSeconds string = '600'

@description('SYNC_SETTLE_SECONDS.')
param syncSettleSeconds string = '120'

@description('SYNC_MAX_RUN_SECONDS (under host.json functionTimeout, 10 minutes).')
param syncMaxRunSeconds string = '480'

@description('SYNC_FORM_IDS (empty: every form).')
param syncFormIds string = ''

@description('SYNC_FORMSPACE_IDS (empty: every FormSpace).')
param syncFormspaceIds string = ''

@description('SYNC_TRUST_PUSHES.')
param syncTrustPushes string = 'false'

@description('QUEUE_VISIBILITY_TIMEOUT_SECONDS (standalone mode; harmless under the host).')
param queueVisibilityTimeoutSeconds string = '300'

@description('QUEUE_RETRY_DELAY_SECONDS (standalone mode; harmless under the host).')
param queueRetryDelaySeconds string = '5'

// ---------------------------------------------------------------- webhook

@description('WEBHOOK_AUTH: jwt (default; needs the app registration), basic or header. While jwt has no audience yet (no app registration), the app is given an empty WEBHOOK_AUTH: it starts and refuses every push.')
@allowed([
  'jwt'
  'entra'
  'basic'
  'header'
  ''
])
param webhookAuth string = 'jwt'

@description('WEBHOOK_AUDIENCE. Empty: the app registration\'s appId, which is the `aud` of the v2 access tokens it issues (the registration asks for v2 tokens).')
param webhookAudience string = ''

@description('WEBHOOK_JWT_ISSUER. Empty: this tenant\'s v2 issuer.')
param webhookJwtIssuer string = ''

@description('WEBHOOK_REQUIRED_ROLE: the app role TrueContext\'s HTTP Connection client must hold (scripts/entra-app.sh defines it).')
param webhookRequiredRole string = 'Submissions.Push'

@description('WEBHOOK_ALLOWED_CLIENT_IDS (empty: any client holding the role).')
param webhookAllowedClientIds string = ''

@description('WEBHOOK_BASIC_USERNAME (with basic).')
param webhookBasicUsername string = ''

@description('WEBHOOK_HEADER_NAME (with header).')
param webhookHeaderName string = ''

@description('WEBHOOK_MAX_BODY_BYTES.')
param webhookMaxBodyBytes string = '10485760'

@description('WEBHOOK_ID_FIELD (custom template bodies).')
param webhookIdField string = ''

@description('WEBHOOK_RECOVERY_SECONDS.')
param webhookRecoverySeconds string = '60'

// ---------------------------------------------------------------- tokens, alerts, limits, logs

@description('TOKEN_REFRESH_MARGIN_SECONDS.')
param tokenRefreshMarginSeconds string = '600'

@description('TOKEN_ENDPOINT_TIMEOUT_SECONDS.')
param tokenEndpointTimeoutSeconds string = '30'

@description('TOKEN_REFRESH_LEASE_SECONDS.')
param tokenRefreshLeaseSeconds string = '90'

@description('TOKEN_KEEPALIVE_HOURS.')
param tokenKeepaliveHours string = '20'

@description('B2C_REFRESH_WINDOW_DAYS.')
param b2cRefreshWindowDays string = '90'

@description('B2C_REAUTH_WARNING_DAYS.')
param b2cReauthWarningDays string = '14'

@description('ALERT_WEBHOOK_FORMAT: text or adaptive-card.')
param alertWebhookFormat string = 'text'

@description('MAX_REQUEST_BODY_BYTES.')
param maxRequestBodyBytes string = '16777216'

@description('RUST_LOG.')
param rustLog string = 'info'

// ---------------------------------------------------------------- names and computed values

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var allTags = union(tags, {
  'azd-env-name': environmentName
})

var entraIssuer = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'

var secretNames = {
  truecontextApiKeySecret: 'truecontext-api-key-secret'
  oauthClientSecret: 'oauth-client-secret'
  webhookBasicPassword: 'webhook-basic-password'
  webhookHeaderValue: 'webhook-header-value'
  alertWebhookUrl: 'alert-webhook-url'
}

// The secrets the vault holds after this deployment: those passed now and those put there by hand.
var secretsInVault = union(existingVaultSecrets, empty(truecontextApiKeySecret) ? [] : [
  secretNames.truecontextApiKeySecret
], empty(oauthClientSecret) ? [] : [
  secretNames.oauthClientSecret
], empty(webhookBasicPassword) ? [] : [
  secretNames.webhookBasicPassword
], empty(webhookHeaderValue) ? [] : [
  secretNames.webhookHeaderValue
], empty(alertWebhookUrl) ? [] : [
  secretNames.alertWebhookUrl
])

var effectiveWebhookAudience = empty(webhookAudience) ? oauthClientId : webhookAudience
var jwtWebhook = webhookAuth == 'jwt' || webhookAuth == 'entra'
var effectiveWebhookAuth = jwtWebhook && empty(effectiveWebhookAudience) ? '' : webhookAuth

// Every product setting that is neither a secret nor wired to a resource.
var productSettings = {
  OAUTH_PROVIDER: oauthProvider
  OAUTH_AUTHORITY: empty(oauthAuthority) ? entraIssuer : oauthAuthority
  OAUTH_CLIENT_ID: oauthClientId
  OAUTH_FEDERATED_CREDENTIAL: oauthFederatedCredential
  OAUTH_SCOPES: oauthScopes
  OAUTH_GRANT: oauthGrant
  OAUTH_AUTHORIZE_ENDPOINT: oauthAuthorizeEndpoint
  OAUTH_TOKEN_ENDPOINT: oauthTokenEndpoint
  OAUTH_REFRESH_ENDPOINT: oauthRefreshEndpoint
  OAUTH_CODE_PARAM: oauthCodeParam
  OAUTH_REFRESH_TOKEN_PARAM: oauthRefreshTokenParam
  ALLOWED_TENANTS: allowedTenants
  ALLOWED_USERS: allowedUsers
  TRUECONTEXT_BASE_URL: truecontextBaseUrl
  TRUECONTEXT_AUTH: truecontextAuth
  TRUECONTEXT_API_KEY_ID: truecontextApiKeyId
  TRUECONTEXT_CONNECTION: truecontextConnection
  TRUECONTEXT_CONCURRENCY: truecontextConcurrency
  TRUECONTEXT_DAILY_CALL_BUDGET: truecontextDailyCallBudget
  TRUECONTEXT_TIMEOUT_SECONDS: truecontextTimeoutSeconds
  TRUECONTEXT_MAX_RESPONSE_BYTES: truecontextMaxResponseBytes
  SYNC_SCHEDULE: syncSchedule
  INCOMING_QUEUE_NAME: incomingQueueName
  LANDED_QUEUE_NAME: landedQueueName
  SUBMISSIONS_CONTAINER: submissionsContainerName
  SYNC_BACKFILL_DAYS: syncBackfillDays
  SYNC_OVERLAP_SECONDS: syncOverlapSeconds
  SYNC_SETTLE_SECONDS: syncSettleSeconds
  SYNC_MAX_RUN_SECONDS: syncMaxRunSeconds
  SYNC_FORM_IDS: syncFormIds
  SYNC_FORMSPACE_IDS: syncFormspaceIds
  SYNC_TRUST_PUSHES: syncTrustPushes
  QUEUE_VISIBILITY_TIMEOUT_SECONDS: queueVisibilityTimeoutSeconds
  QUEUE_RETRY_DELAY_SECONDS: queueRetryDelaySeconds
  WEBHOOK_AUTH: effectiveWebhookAuth
  WEBHOOK_AUDIENCE: effectiveWebhookAudience
  WEBHOOK_JWT_ISSUER: empty(webhookJwtIssuer) ? entraIssuer : webhookJwtIssuer
  WEBHOOK_REQUIRED_ROLE: webhookRequiredRole
  WEBHOOK_ALLOWED_CLIENT_IDS: webhookAllowedClientIds
  WEBHOOK_BASIC_USERNAME: webhookBasicUsername
  WEBHOOK_HEADER_NAME: webhookHeaderName
  WEBHOOK_MAX_BODY_BYTES: webhookMaxBodyBytes
  WEBHOOK_ID_FIELD: webhookIdField
  WEBHOOK_RECOVERY_SECONDS: webhookRecoverySeconds
  TOKEN_REFRESH_MARGIN_SECONDS: tokenRefreshMarginSeconds
  TOKEN_ENDPOINT_TIMEOUT_SECONDS: tokenEndpointTimeoutSeconds
  TOKEN_REFRESH_LEASE_SECONDS: tokenRefreshLeaseSeconds
  TOKEN_KEEPALIVE_HOURS: tokenKeepaliveHours
  B2C_REFRESH_WINDOW_DAYS: b2cRefreshWindowDays
  B2C_REAUTH_WARNING_DAYS: b2cReauthWarningDays
  ALERT_WEBHOOK_FORMAT: alertWebhookFormat
  MAX_REQUEST_BODY_BYTES: maxRequestBodyBytes
  RUST_LOG: rustLog
}

// ---------------------------------------------------------------- modules

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    appInsightsName: 'appi-${resourceToken}'
    actionGroupName: 'ag-${resourceToken}'
    location: location
    tags: allTags
    alertEmail: alertEmail
    retentionInDays: logRetentionDays
    failureRatePercent: failureRatePercent
    failureMinCount: failureMinCount
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: allTags
    skuName: storageSkuName
    incomingQueueName: incomingQueueName
    landedQueueName: landedQueueName
    submissionsContainerName: submissionsContainerName
    deploymentContainerName: deploymentContainerName
    softDeleteDays: blobSoftDeleteDays
    versionRetentionDays: blobVersionRetentionDays
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: allTags
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
    secretNames: secretNames
    truecontextApiKeySecret: truecontextApiKeySecret
    oauthClientSecret: oauthClientSecret
    webhookBasicPassword: webhookBasicPassword
    webhookHeaderValue: webhookHeaderValue
    alertWebhookUrl: alertWebhookUrl
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: 'func-${resourceToken}'
    planName: 'plan-${resourceToken}'
    location: location
    tags: allTags
    planKind: planKind
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    epPackageBlobName: epPackageBlobName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    keyVaultUri: keyVault.outputs.uri
    secretNames: secretNames
    secretsInVault: secretsInVault
    maxDequeueCount: maxDequeueCount
    oauthRedirectUri: oauthRedirectUri
    productSettings: productSettings
  }
  // The host starts using its identity connections as soon as the settings land.
  dependsOn: [
    rbac
  ]
}

// ---------------------------------------------------------------- outputs (azd writes them to its environment)

var appHost = functionApp.outputs.defaultHostName

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_DEPLOYMENT_CONTAINER string = storage.outputs.deploymentContainerName
output AZURE_APP_INSIGHTS_NAME string = monitoring.outputs.appInsightsName
// Not named AZURE_CLIENT_ID: azd exports its environment to hooks, where Azure SDK credentials
// would take that name for their own.
output AZURE_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output PLAN_KIND string = planKind
output FUNCTION_APP_URL string = 'https://${appHost}'
output AUTHORIZE_URL string = 'https://${appHost}/api/authorize?connection=default'
output REDIRECT_URI string = empty(oauthRedirectUri) ? 'https://${appHost}/api/callback' : oauthRedirectUri
output WEBHOOK_URL string = 'https://${appHost}/api/webhook'
