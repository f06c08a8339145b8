// The Function App: plan, site, basic-auth publishing off, and the app settings.
//
// Flex Consumption (default) vs Elastic Premium (planKind):
// - Flex: the runtime is functionAppConfig.runtime { custom, 1.0 }, the package comes from the
//   deployment blob container (read with the user-assigned identity), scale is
//   functionAppConfig.scaleAndConcurrency. Flex rejects or ignores FUNCTIONS_WORKER_RUNTIME,
//   FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE, WEBSITE_CONTENTSHARE,
//   WEBSITE_CONTENTAZUREFILECONNECTIONSTRING, linuxFxVersion, ftpsState, use32BitWorkerProcess,
//   functionAppScaleLimit, ... (Learn "Flex Consumption plan deprecations"; ARM error 51021 names
//   siteConfig properties such as FtpsState outright). So every EP-only value lives in
//   `epOnlySettings` / `epSiteConfig` below, used only when isElasticPremium
//   (scripts/check-infra.py checks that).
// - Elastic Premium: custom handlers on Linux take FUNCTIONS_WORKER_RUNTIME=custom and an empty
//   linuxFxVersion (the Functions stacks data for "custom" on Linux). EP normally mounts an
//   Azure Files content share, whose only setting (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING)
//   is a connection string with an account key; shared-key access is off on our storage account,
//   so this template instead runs EP *without* Azure Files (Learn "Create an app without Azure
//   Files"): WEBSITE_RUN_FROM_PACKAGE = the package's blob URL, fetched with the user-assigned
//   identity (WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID). The operator uploads the zip there
//   (docs/deploy.md); scale-out may be limited without the share.

@description('Function App name (globally unique; it is the *.azurewebsites.net host name).')
param name string

@description('Hosting plan name.')
param planName string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object

@description('FlexConsumption (default, FC1) or ElasticPremium (EP1).')
@allowed([
  'FlexConsumption'
  'ElasticPremium'
])
param planKind string

@description('Resource id of the app\'s user-assigned identity.')
param identityId string

@description('Client id of the app\'s user-assigned identity.')
param identityClientId string

@description('Storage account name (host storage and product data).')
param storageAccountName string

@description('Blob container holding the deployment package.')
param deploymentContainerName string

@description('Elastic Premium only: blob name of the package in the deployment container.')
param epPackageBlobName string

@description('Flex: most instances the app scales out to (40-1000; 40 is the lowest Flex allows). EP: the scale-out limit. The app is cluster-safe at any count, and TRUECONTEXT_CONCURRENCY keeps calls to TrueContext at 3 in flight however many instances run.')
param maximumInstanceCount int

@description('Flex instance memory: 512, 2048 or 4096 MB. 512 is plenty for this handler (about 8 MiB idle).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('Key Vault URI (https://<vault>.vault.azure.net/).')
param keyVaultUri string

@description('Secret names, keyed by role.')
param secretNames object

@description('Names of the secrets that exist in the vault; only those become Key Vault references, the rest stay empty.')
param secretsInVault array

@description('Deliveries before a queue message is poisoned; feeds both QUEUE_MAX_DEQUEUE_COUNT and the host.json override.')
param maxDequeueCount int

@description('OAUTH_REDIRECT_URI override. Empty: https://<default host name>/api/callback.')
param oauthRedirectUri string

@description('The product settings computed in main.bicep (no secrets).')
param productSettings object

var isElasticPremium = planKind == 'ElasticPremium'
var isFlex = !isElasticPremium

var blobServiceUri = 'https://${storageAccountName}.blob.${environment().suffixes.storage}'
var queueServiceUri = 'https://${storageAccountName}.queue.${environment().suffixes.storage}'
var tableServiceUri = 'https://${storageAccountName}.table.${environment().suffixes.storage}'

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: isFlex ? 'functionapp' : 'elastic'
  sku: isFlex ? {
    name: 'FC1'
    tier: 'FlexConsumption'
  } : {
    name: 'EP1'
    tier: 'ElasticPremium'
  }
  // checkov:skip=CKV_AZURE_225:Zone redundancy is a per-region opt-in on both plans (and needs more than one always-ready/minimum instance); left to the operator.
  properties: union({
    reserved: true
  }, isFlex ? {} : {
    maximumElasticWorkerCount: maximumInstanceCount
  })
}

var flexFunctionAppConfig = {
  deployment: {
    storage: {
      type: 'blobContainer'
      value: '${blobServiceUri}/${deploymentContainerName}'
      authentication: {
        type: 'UserAssignedIdentity'
        userAssignedIdentityResourceId: identityId
      }
    }
  }
  scaleAndConcurrency: {
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  runtime: {
    name: 'custom'
    version: '1.0'
  }
}

// Elastic Premium only: Flex rejects every one of these (ARM error 51021 names FtpsState,
// Use32BitWorkerProcess, LinuxFxVersion, FunctionAppScaleLimit). Applied by epWebConfig below.
var epSiteConfig = {
  linuxFxVersion: ''
  ftpsState: 'Disabled'
  use32BitWorkerProcess: false
  functionAppScaleLimit: maximumInstanceCount
  minimumElasticInstanceCount: 1
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  // checkov:skip=CKV_AZURE_17:Callers are browsers (the consent flow) and TrueContext's HTTP Connection; they authenticate with function keys, OAuth and the webhook check, and none presents a client certificate.
  // checkov:skip=CKV_AZURE_222:Without VNet integration the HTTP triggers are public by design: TrueContext pushes from the internet and the admin consents from a browser.
  // checkov:skip=CKV_AZURE_78:FTP is off through basicPublishingCredentialsPolicies/ftp below; siteConfig.ftpsState is set only on Elastic Premium (epWebConfig) because Flex rejects it (ARM error 51021).
  properties: {
    // checkov:skip=CKV_AZURE_212:Flex Consumption scales instances itself (scaleAndConcurrency); a fixed minimum instance count does not apply.
    // checkov:skip=CKV_AZURE_213:No platform health check: /api/status answers 424 whenever an operator should look, which would evict healthy instances; Flex manages instances itself.
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    functionAppConfig: isFlex ? flexFunctionAppConfig : null
    // Valid on both plans (the azurerm Flex resource's site_config offers exactly these).
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      cors: {
        allowedOrigins: []
      }
    }
  }
}

// Elastic Premium only. A config/web PUT replaces the web config, so it repeats the common values.
// A loop of zero or one rather than `if`: checkov cannot read the body of a conditional resource.
resource epWebConfig 'Microsoft.Web/sites/config@2024-04-01' = [for i in range(0, isElasticPremium ? 1 : 0): {
  // checkov:skip=CKV_AZURE_13:As on appsettings below: the handler authenticates its callers; App Service Authentication would intercept them.
  // checkov:skip=CKV_AZURE_63:Logs go to Application Insights, not App Service file-system logs.
  // checkov:skip=CKV_AZURE_65:Same as CKV_AZURE_63.
  parent: site
  // checkov:skip=CKV_AZURE_66:Same as CKV_AZURE_63.
  // checkov:skip=CKV_AZURE_80:No .NET: the app is a Rust custom handler.
  // checkov:skip=CKV_AZURE_88:Azure Files needs an account-key connection string; EP here runs from a package URL without it.
  name: 'web'
  // checkov:skip=CKV_AZURE_222:Public HTTP triggers by design (see the site's suppression).
  properties: union({
    minTlsVersion: '1.2'
    scmMinTlsVersion: '1.2'
    http20Enabled: true
    cors: {
      allowedOrigins: []
    }
  }, epSiteConfig)
  // Two config PUTs on one site at once can conflict; settings first.
  dependsOn: [
    appSettingsConfig
  ]
}]

resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// Settings wired to the infrastructure: identity storage, identity, vault, telemetry, the secrets
// (Key Vault references only, empty when the vault holds no such secret), the redirect URI.
var commonSettings = {
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: blobServiceUri
  AzureWebJobsStorage__queueServiceUri: queueServiceUri
  AzureWebJobsStorage__tableServiceUri: tableServiceUri
  AzureFunctionsJobHost__extensions__queues__maxDequeueCount: string(maxDequeueCount)
  QUEUE_MAX_DEQUEUE_COUNT: string(maxDequeueCount)
  AZURE_CLIENT_ID: identityClientId
  STORE: 'azure'
  KEYVAULT_URI: keyVaultUri
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identityClientId}'
  LOG_FORMAT: 'json'
  OAUTH_REDIRECT_URI: empty(oauthRedirectUri) ? 'https://${site.properties.defaultHostName}/api/callback' : oauthRedirectUri
  TRUECONTEXT_API_KEY_SECRET: contains(secretsInVault, secretNames.truecontextApiKeySecret) ? '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${secretNames.truecontextApiKeySecret}/)' : ''
  OAUTH_CLIENT_SECRET: contains(secretsInVault, secretNames.oauthClientSecret) ? '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${secretNames.oauthClientSecret}/)' : ''
  WEBHOOK_BASIC_PASSWORD: contains(secretsInVault, secretNames.webhookBasicPassword) ? '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${secretNames.webhookBasicPassword}/)' : ''
  WEBHOOK_HEADER_VALUE: contains(secretsInVault, secretNames.webhookHeaderValue) ? '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${secretNames.webhookHeaderValue}/)' : ''
  ALERT_WEBHOOK_URL: contains(secretsInVault, secretNames.alertWebhookUrl) ? '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${secretNames.alertWebhookUrl}/)' : ''
}

// Elastic Premium only (see the top of this file). Never on Flex.
var epOnlySettings = {
  FUNCTIONS_WORKER_RUNTIME: 'custom'
  FUNCTIONS_EXTENSION_VERSION: '~4'
  WEBSITE_RUN_FROM_PACKAGE: '${blobServiceUri}/${deploymentContainerName}/${epPackageBlobName}'
  WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID: identityId
}

var appSettings = isElasticPremium ? union(productSettings, commonSettings, epOnlySettings) : union(productSettings, commonSettings)

// A separate config resource (not siteConfig.appSettings): it can use the site's own host name,
// and it replaces the whole set on every deployment, so a setting removed here goes away.
resource appSettingsConfig 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_80:No .NET: the app is a Rust custom handler.
  // checkov:skip=CKV_AZURE_88:Azure Files needs an account-key connection string; this app is keyless (Flex uses blob deployment; EP runs from a package URL).
  // checkov:skip=CKV_AZURE_222:The same public HTTP endpoint as the site (see the site's suppression).
  parent: site
  name: 'appsettings'
  // checkov:skip=CKV_AZURE_13:App Service Authentication would intercept the consent callback and the webhook, which authenticate in the handler (OAuth with PKCE, WEBHOOK_AUTH); function keys guard the rest.
  // checkov:skip=CKV_AZURE_63:HTTP logging is App Service file-system logging; this app logs to Application Insights (the checks read web-config properties that an appsettings resource does not carry).
  // checkov:skip=CKV_AZURE_65:Same as CKV_AZURE_63 (detailed error pages are an App Service web-config feature).
  // checkov:skip=CKV_AZURE_66:Same as CKV_AZURE_63 (failed request tracing).
  properties: appSettings
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
