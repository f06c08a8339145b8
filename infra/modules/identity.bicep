// The one user-assigned managed identity the Function App runs as. It reads and writes storage
// (host and product data), Key Vault (refresh tokens, configured secrets, Key Vault references),
// publishes telemetry to Application Insights, and is the federated credential of the Entra app
// registration (no client secret).

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags for the resource.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
