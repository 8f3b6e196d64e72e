// Azure AI Vision (Image Analysis 4.0). Keys are disabled: the app calls it with its managed
// identity (Cognitive Services User, see rbac.bicep), which needs the custom subdomain endpoint
// (https://<name>.cognitiveservices.azure.com) — Entra tokens are not accepted on regional ones.
param name string
param location string
param tags object = {}

@allowed([
  'F0'
  'S1'
])
param skuName string = 'S1'

module account 'br/public:avm/res/cognitive-services/account:0.10.1' = {
  name: 'visionAccount'
  params: {
    name: name
    location: location
    tags: tags
    kind: 'ComputerVision'
    sku: skuName
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
    // The app sends image bytes, never URLs: the service needs no outbound access of its own.
    restrictOutboundNetworkAccess: true
  }
}

output name string = account.outputs.name
output resourceId string = account.outputs.resourceId
output endpoint string = 'https://${name}.cognitiveservices.azure.com'
