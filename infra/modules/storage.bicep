// The storage account: the Functions host's own storage (AzureWebJobsStorage: keys, timer and
// queue-trigger bookkeeping), the Flex deployment container, and the product's data (the
// `tcbridge*` tables, the incoming / poison / landed queues, the `submissions` container).
// Keyless: shared-key access is off; everything uses the managed identity (see rbac.bicep).

@description('Storage account name (3-24 lowercase letters and digits, globally unique).')
param name string

@description('Azure region.')
param location string

@description('Tags for the resource.')
param tags object

@description('Replication. ZRS keeps landed data through a zone outage; Standard_LRS where the region has no zones; GZRS/GRS for a second region.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string

@description('Queue of pushed submissions (INCOMING_QUEUE_NAME); its poison queue is `<name>-poison`.')
param incomingQueueName string

@description('Queue of landed-record events (LANDED_QUEUE_NAME).')
param landedQueueName string

@description('Blob container of landed data (SUBMISSIONS_CONTAINER).')
param submissionsContainerName string

@description('Blob container the Flex Consumption deployment (and the Elastic Premium package URL) uses.')
param deploymentContainerName string

@description('Days a deleted blob or container can be restored.')
@minValue(1)
@maxValue(365)
param softDeleteDays int

@description('Days an old blob version (a landed record before its last change) is kept.')
@minValue(1)
@maxValue(3650)
param versionRetentionDays int

@description('Log Analytics workspace for the storage audit logs.')
param logAnalyticsWorkspaceId string

// The Azure backend prefixes each table name with `tcbridge` (src/store/azure/mod.rs TABLE_PREFIX;
// the names are src/store/mod.rs Table::name). It also creates them on first use; creating them
// here makes a missing role show up at deploy time instead of on the first request.
var tableNames = [
  'tcbridgeconnections'
  'tcbridgependingflows'
  'tcbridgecursors'
  'tcbridgesubmissions'
  'tcbridgeleases'
  'tcbridgeruns'
  'tcbridgealerts'
  'tcbridgebudgets'
  'tcbridgeincoming'
  'tcbridgedeliveries'
  'tcbridgequarantine'
]

var queueNames = [
  incomingQueueName
  '${incomingQueueName}-poison'
  landedQueueName
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  // checkov:skip=CKV_AZURE_35:Flex Consumption without VNet integration reaches storage over its public endpoint; access is Entra-only (shared keys off), so the network default stays Allow.
  // checkov:skip=CKV_AZURE_59:Same reason: public network access is needed without VNet integration and private endpoints; every request needs an Entra token.
  // checkov:skip=CKV_AZURE_206:Replication is the skuName parameter (default ZRS: survives a zone outage); geo-redundancy is the operator's choice, and landed data can be re-synced from TrueContext.
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource submissionsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: submissionsContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Versioning keeps every earlier state of a landed record; this bounds how long.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-old-versions'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
            }
            actions: {
              version: {
                delete: {
                  daysAfterCreationGreaterThan: versionRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    blobService
  ]
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for q in queueNames: {
  parent: queueService
  name: q
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for t in tableNames: {
  parent: tableService
  name: t
}]

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: blobService
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

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: queueService
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

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: tableService
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

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
output deploymentContainerName string = deploymentContainer.name
output submissionsContainerName string = submissionsContainer.name
