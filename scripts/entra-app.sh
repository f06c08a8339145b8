#!/usr/bin/env bash
# The Entra side of a deployment: the app registration truecontext-bridge signs administrators in
# with and that TrueContext's HTTP Connection gets webhook tokens for. Idempotent: run it after
# every provision (azd runs it as the postprovision hook).
#
#   - web redirect URI      = the app's /api/callback (kept alongside any others already there)
#   - identifier URI        = api://<appId>; access tokens version 2 (so `aud` = appId, which is
#                             what WEBHOOK_AUDIENCE is set to, and `iss` = the tenant's v2 issuer)
#   - app role              = Submissions.Push (WEBHOOK_REQUIRED_ROLE), for applications and users
#   - delegated permissions = Microsoft Graph openid, offline_access, User.Read
#   - federated credential  = the app's user-assigned managed identity (no client secret)
#   - service principal     = created, so the role can be granted and tokens issued
# Then it puts the appId where the app reads it: OAUTH_CLIENT_ID (and WEBHOOK_AUDIENCE /
# WEBHOOK_AUTH when the webhook uses jwt) on the Function App, and in the azd environment so the
# next `azd provision` keeps them.
#
# Why a script and not Bicep: Microsoft Graph Bicep (extension microsoftGraphV1) cannot be parsed
# by checkov's Bicep parser, which would leave the file unscanned (docs/deploy.md).
#
# Inputs (environment; azd provides them from the deployment outputs):
#   AZURE_FUNCTION_APP_NAME, AZURE_RESOURCE_GROUP, REDIRECT_URI, AZURE_IDENTITY_PRINCIPAL_ID,
#   AZURE_TENANT_ID; optional AZURE_ENV_NAME (names the app), OAUTH_CLIENT_ID (an existing app to
#   update), CREATE_APP_REGISTRATION=false (do nothing), WEBHOOK_AUTH (default jwt),
#   WEBHOOK_AUDIENCE (set: not overridden), WEBHOOK_REQUIRED_ROLE (default Submissions.Push).
# Without azd: `bash scripts/entra-app.sh --resource-group <rg> [--deployment <name>]` reads the
# outputs of that resource-group deployment (default name: main).
# Needs: bash, az (signed in, allowed to create app registrations), python3.
set -euo pipefail

deployment=main
resource_group=""
while [ $# -gt 0 ]; do
  case "$1" in
    --resource-group|-g) resource_group="$2"; shift 2 ;;
    --deployment|-n) deployment="$2"; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "entra-app.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ "${CREATE_APP_REGISTRATION:-true}" = "false" ]; then
  echo "entra-app.sh: CREATE_APP_REGISTRATION=false; leaving the app registration to you (set OAUTH_CLIENT_ID)."
  exit 0
fi

for tool in az python3; do
  command -v "$tool" >/dev/null || { echo "entra-app.sh: $tool is required" >&2; exit 1; }
done

if [ -n "$resource_group" ]; then
  # Read the deployment outputs (the same names azd writes to its environment).
  eval "$(az deployment group show -g "$resource_group" -n "$deployment" --query properties.outputs -o json |
    python3 -c 'import json, shlex, sys
for k, v in json.load(sys.stdin).items():
    print("export %s=%s" % (k, shlex.quote(str(v.get("value", "")))))')"
fi

for var in AZURE_FUNCTION_APP_NAME AZURE_RESOURCE_GROUP REDIRECT_URI AZURE_IDENTITY_PRINCIPAL_ID AZURE_TENANT_ID; do
  if [ -z "${!var:-}" ]; then
    echo "entra-app.sh: $var is not set (run after provisioning, or pass --resource-group)" >&2
    exit 1
  fi
done

role_value="${WEBHOOK_REQUIRED_ROLE:-Submissions.Push}"
display_name="truecontext-bridge-${AZURE_ENV_NAME:-$AZURE_FUNCTION_APP_NAME}"
graph_app_id=00000003-0000-0000-c000-000000000000 # Microsoft Graph
login_endpoint="$(az cloud show --query endpoints.activeDirectory -o tsv)"
login_endpoint="${login_endpoint%/}"
graph_endpoint="$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv)"
graph_endpoint="${graph_endpoint%/}"
issuer="${login_endpoint}/${AZURE_TENANT_ID}/v2.0"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. Find or create the registration.
app_id=""
if [ -n "${OAUTH_CLIENT_ID:-}" ]; then
  app_id="$(az ad app show --id "$OAUTH_CLIENT_ID" --query appId -o tsv 2>/dev/null || true)"
  [ -n "$app_id" ] || { echo "entra-app.sh: OAUTH_CLIENT_ID=$OAUTH_CLIENT_ID is not an app registration in this tenant" >&2; exit 1; }
fi
if [ -z "$app_id" ]; then
  app_id="$(az ad app list --filter "displayName eq '$display_name'" --query '[0].appId' -o tsv)"
fi
if [ -z "$app_id" ]; then
  echo "entra-app.sh: creating app registration $display_name"
  app_id="$(az ad app create --display-name "$display_name" --sign-in-audience AzureADMyOrg --query appId -o tsv)"
fi
object_id="$(az ad app show --id "$app_id" --query id -o tsv)"
echo "entra-app.sh: app registration $display_name, appId $app_id"

# 2. Redirect URI, identifier URI, v2 access tokens, app role: one PATCH built from the current
# object, so redirect URIs, identifier URIs and roles that are already there are kept.
az ad app show --id "$app_id" -o json >"$work/app.json"
python3 - "$work/app.json" "$app_id" "$REDIRECT_URI" "$role_value" >"$work/patch.json" <<'PY'
import json, sys, uuid
app = json.load(open(sys.argv[1]))
app_id, redirect, role_value = sys.argv[2], sys.argv[3], sys.argv[4]
web = app.get("web") or {}
redirects = list(web.get("redirectUris") or [])
if redirect not in redirects:
    redirects.append(redirect)
uris = list(app.get("identifierUris") or [])
if "api://" + app_id not in uris:
    uris.append("api://" + app_id)
api = app.get("api") or {}
roles = list(app.get("appRoles") or [])
if not any(r.get("value") == role_value for r in roles):
    roles.append({
        "id": str(uuid.uuid4()),
        "value": role_value,
        "displayName": "Push submissions",
        "description": "Allowed to POST submissions to the truecontext-bridge webhook (WEBHOOK_REQUIRED_ROLE).",
        "allowedMemberTypes": ["Application", "User"],
        "isEnabled": True,
    })
patch = {
    "web": {"redirectUris": redirects},
    "identifierUris": uris,
    "api": {
        "requestedAccessTokenVersion": 2,
        "oauth2PermissionScopes": api.get("oauth2PermissionScopes") or [],
        "preAuthorizedApplications": api.get("preAuthorizedApplications") or [],
        "knownClientApplications": api.get("knownClientApplications") or [],
    },
    "appRoles": roles,
}
json.dump(patch, sys.stdout)
PY
az rest --method PATCH --url "${graph_endpoint}/v1.0/applications/${object_id}" \
  --headers Content-Type=application/json --body @"$work/patch.json" --output none

# 3. Delegated Microsoft Graph permissions the sign-in needs (added only when missing).
add_scope() { # id name
  local present
  present="$(az ad app show --id "$app_id" \
    --query "length(requiredResourceAccess[?resourceAppId=='$graph_app_id'].resourceAccess[] | [?id=='$1'])" -o tsv)"
  if [ "${present:-0}" = "0" ]; then
    echo "entra-app.sh: adding Microsoft Graph delegated permission $2"
    az ad app permission add --id "$app_id" --api "$graph_app_id" --api-permissions "$1=Scope" --output none
  fi
}
add_scope 37f7f235-527c-4136-accd-4a02d197296e openid
add_scope 7427e0e9-2fba-42fe-b0c0-848c9e6a8182 offline_access
add_scope e1fe6dd8-ba31-4d61-89e7-88639da4683d User.Read

# 4. The service principal (enterprise app) in this tenant.
if ! az ad sp show --id "$app_id" --output none 2>/dev/null; then
  az ad sp create --id "$app_id" --output none
fi

# 5. The managed identity as federated credential (replaces a client secret).
fic_name=tcbridge-managed-identity
cat >"$work/fic.json" <<EOF
{
  "name": "$fic_name",
  "issuer": "$issuer",
  "subject": "$AZURE_IDENTITY_PRINCIPAL_ID",
  "audiences": ["api://AzureADTokenExchange"],
  "description": "The user-assigned managed identity of $AZURE_FUNCTION_APP_NAME"
}
EOF
existing_subject="$(az ad app federated-credential list --id "$app_id" --query "[?name=='$fic_name'].subject | [0]" -o tsv)"
if [ -z "$existing_subject" ]; then
  az ad app federated-credential create --id "$app_id" --parameters @"$work/fic.json" --output none
elif [ "$existing_subject" != "$AZURE_IDENTITY_PRINCIPAL_ID" ]; then
  az ad app federated-credential update --id "$app_id" --federated-credential-id "$fic_name" \
    --parameters @"$work/fic.json" --output none
fi

# 6. Give the app its client id (live), and keep it for the next provision.
settings=("OAUTH_CLIENT_ID=$app_id")
webhook_auth="${WEBHOOK_AUTH:-jwt}"
if { [ "$webhook_auth" = jwt ] || [ "$webhook_auth" = entra ]; } && [ -z "${WEBHOOK_AUDIENCE:-}" ]; then
  settings+=("WEBHOOK_AUDIENCE=$app_id" "WEBHOOK_AUTH=$webhook_auth")
fi
if [ "${OAUTH_CLIENT_ID:-}" != "$app_id" ]; then
  az functionapp config appsettings set -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
    --settings "${settings[@]}" --output none
  if [ -n "${AZURE_ENV_NAME:-}" ] && command -v azd >/dev/null; then
    azd env set OAUTH_CLIENT_ID "$app_id"
  else
    echo "entra-app.sh: pass oauthClientId=$app_id to later deployments (-p oauthClientId=$app_id)."
  fi
fi

cat <<EOF
entra-app.sh: done.
  OAUTH_CLIENT_ID / WEBHOOK_AUDIENCE : $app_id
  redirect URI registered            : $REDIRECT_URI
  federated credential subject       : $AZURE_IDENTITY_PRINCIPAL_ID
Still yours to do (docs/deploy.md):
  - add the TrueContext-facing API permission for OAUTH_SCOPES and grant admin consent;
  - give TrueContext's HTTP Connection client the app role $role_value.
EOF
