// The VisionOps workbook (latency, success rate, throughput, availability, quota, errors), built
// by issue 6's renderer from queries/*.kql into infra/workbook/visionops.workbook.json. There is no
// Azure Verified Module for workbooks, hence the plain resource.
param location string
param tags object = {}
param displayName string

@description('Workbook JSON (Notebook/1.0), as rendered into infra/workbook/visionops.workbook.json.')
param serializedData string

@description('Application Insights resource the workbook opens on.')
param sourceId string

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; derive it so redeploys update the same workbook.
  name: guid(resourceGroup().id, sourceId, 'visionops-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    serializedData: serializedData
    sourceId: toLower(sourceId)
    version: 'Notebook/1.0'
  }
}

output workbookId string = workbook.id
