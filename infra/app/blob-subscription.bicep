// Event Grid subscription that feeds the Event Grid–sourced blob trigger (the only blob trigger
// source on Flex Consumption): BlobCreated in the images container → the host's blobs extension
// webhook. Deployed by infra/hooks/postdeploy.sh after `azd deploy`, because the webhook's
// `blobs_extension` system key only exists once the host has loaded analyze_image. The key is
// read here with listKeys and never leaves Azure Resource Manager (no shell variable, no log).
param systemTopicName string
param functionAppName string
param imagesContainerName string = 'images'
param deadLetterContainerName string = 'eventgrid-deadletter'
param storageAccountName string

@description('Name of the blob-triggered function (shared/blueprints/analysis.py).')
param functionName string = 'analyze_image'

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource functionHost 'Microsoft.Web/sites/host@2024-04-01' existing = {
  parent: functionApp
  name: 'default'
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource subscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'analyze-image-blob-created'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${functionApp.properties.defaultHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${functionName}&code=${functionHost.listKeys().systemKeys.blobs_extension}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      // Only the images container: results/ and failed/ writes must not trigger analysis.
      subjectBeginsWith: '/blobServices/default/containers/${imagesContainerName}/blobs/'
      isSubjectCaseSensitive: false
    }
    // Event Grid retries for 24 h, then parks the event instead of dropping it
    // (python -m shared.replay or a re-upload brings the blob back).
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: storageAccount.id
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output eventSubscriptionName string = subscription.name
