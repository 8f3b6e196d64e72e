#!/usr/bin/env sh
# azd postdeploy hook: wire the images container to the blob trigger.
#
# The Event Grid subscription needs the host's blobs_extension system key, which exists only once
# the deployed code has been indexed — so it cannot be part of `azd provision`. This deploys
# infra/app/blob-subscription.bicep into the environment's resource group (idempotent: every
# deploy re-applies it; the key is resolved inside ARM with listKeys and never printed).
# Needs the Azure CLI, signed in to the same tenant/subscription as azd.
set -eu

for name in AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME EVENTGRID_SYSTEM_TOPIC_NAME AZURE_STORAGE_ACCOUNT_NAME IMAGES_CONTAINER EVENTGRID_DEADLETTER_CONTAINER; do
  eval "value=\${$name:-}"
  if [ -z "$value" ]; then
    echo "postdeploy: $name is not set; run 'azd provision' first" >&2
    exit 1
  fi
done
if ! command -v az >/dev/null 2>&1; then
  echo "postdeploy: the Azure CLI (az) is needed to create the Event Grid subscription" >&2
  exit 1
fi

# The host writes the blobs_extension key when it first indexes the function; give it a minute.
attempt=1
until az functionapp keys list --name "$AZURE_FUNCTION_APP_NAME" --resource-group "$AZURE_RESOURCE_GROUP" \
  --query "systemKeys.blobs_extension" --output tsv 2>/dev/null | grep -q .; do
  if [ "$attempt" -ge 12 ]; then
    echo "postdeploy: the host has no blobs_extension key yet; re-run 'azd deploy' (or this script) in a minute" >&2
    exit 1
  fi
  echo "postdeploy: waiting for the host to index analyze_image (attempt $attempt/12)"
  attempt=$((attempt + 1))
  sleep 10
done

echo "postdeploy: Event Grid subscription BlobCreated($IMAGES_CONTAINER) -> analyze_image"
az deployment group create \
  --name "blob-subscription" \
  --resource-group "$AZURE_RESOURCE_GROUP" \
  --template-file "$(dirname "$0")/../app/blob-subscription.bicep" \
  --parameters \
    systemTopicName="$EVENTGRID_SYSTEM_TOPIC_NAME" \
    functionAppName="$AZURE_FUNCTION_APP_NAME" \
    storageAccountName="$AZURE_STORAGE_ACCOUNT_NAME" \
    imagesContainerName="$IMAGES_CONTAINER" \
    deadLetterContainerName="$EVENTGRID_DEADLETTER_CONTAINER" \
  --output none
echo "postdeploy: done"
