// Key Vault: the product's secret store with STORE=azure (refresh-token-c-<id> secrets, written
// by the app at run time) and the home of the configured secrets, which reach the app only as
// Key Vault references (@Microsoft.KeyVault(SecretUri=...)). RBAC authorization only; the app's
// identity gets Key Vault Secrets Officer on this vault (rbac.bicep).

@description('Key Vault name (3-24 characters, globally unique; reserved for 90 days after deletion because purge protection is on).')
param name string

@description('Azure region.')
param location string

@description('Tags for the resource.')
param tags object

@description('Log Analytics workspace for the vault audit log.')
param logAnalyticsWorkspaceId string

@description('Secret names, keyed by role (main.bicep passes the same map to the Function App).')
param secretNames object

@secure()
@description('TRUECONTEXT_API_KEY_SECRET (TRUECONTEXT_AUTH=basic). Empty: no secret is written.')
param truecontextApiKeySecret string

@secure()
@description('OAUTH_CLIENT_SECRET. Empty (the default design: the federated credential replaces it): no secret is written.')
param oauthClientSecret string

@secure()
@description('WEBHOOK_BASIC_PASSWORD (WEBHOOK_AUTH=basic). Empty: no secret is written.')
param webhookBasicPassword string

@secure()
@description('WEBHOOK_HEADER_VALUE (WEBHOOK_AUTH=header). Empty: no secret is written.')
param webhookHeaderValue string

@secure()
@description('ALERT_WEBHOOK_URL (Slack / Teams webhook URLs carry their own credential). Empty: no secret is written.')
param alertWebhookUrl string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  // checkov:skip=CKV_AZURE_109:Flex Consumption without VNet integration reaches the vault over its public endpoint; access is Entra RBAC only.
  // checkov:skip=CKV_AZURE_189:Same reason: public network access is needed without VNet integration and private endpoints.
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// Every configured (non-empty) secret, written as one Key Vault secret each. An empty parameter
// writes nothing, so a secret put into the vault by hand is never overwritten with a blank.
var secretCandidates = [
  {
    name: secretNames.truecontextApiKeySecret
    value: truecontextApiKeySecret
  }
  {
    name: secretNames.oauthClientSecret
    value: oauthClientSecret
  }
  {
    name: secretNames.webhookBasicPassword
    value: webhookBasicPassword
  }
  {
    name: secretNames.webhookHeaderValue
    value: webhookHeaderValue
  }
  {
    name: secretNames.alertWebhookUrl
    value: alertWebhookUrl
  }
]

resource secrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [for secret in filter(secretCandidates, c => !empty(c.value)): {
  parent: vault
  name: secret.name
  // checkov:skip=CKV_AZURE_41:These are shared credentials (TrueContext API key, webhook password or header value, chat webhook URL, client secret) whose lifetime is set elsewhere and rotated by hand (docs/deploy.md); an expiry here would only stop the app.
  properties: {
    value: secret.value
    contentType: 'text/plain'
  }
}]

resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: vault
  name: 'to-log-analytics'
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
