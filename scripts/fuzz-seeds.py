#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into fuzz/corpus/<target>/seed-*.

Seeds are what the product really receives (an invocation per trigger, a token response per
server kind, genuine signed tokens, each webhook format, a list page, a document, schedules,
settings); the fuzzer mutates from there. Run it again after changing a seed; it overwrites
only seed-* files, never what the fuzzer found. The genuine JWTs are signed with the test
key tests/fixtures/test-key1.pem through openssl.
"""
import base64, json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, indent=1)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, f"seed-{name}"), "wb") as f:
        f.write(data)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims):
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "test-key1"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    key = os.path.join(ROOT, "tests", "fixtures", "test-key1.pem")
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input, capture_output=True, check=True).stdout
    return f"{header}.{payload}.{b64url(signature)}"


DOCUMENT = {
    "identifier": "1234567890", "referenceNumber": "20261201-1234567890", "version": "v2",
    "zone": "America/Toronto", "state": "Complete", "name": "Pump inspection",
    "form": {"identifier": "form-1", "name": "Pump inspection", "version": 3},
    "user": {"identifier": "118800321", "username": "inspector@example.com"},
    "serverReceiveDate": "2026-12-01T10:00:00Z",
    "pages": [{"name": "Page1", "label": "Overview", "sections": [{"name": "S1", "type": "Flow", "answers": [
        {"label": "Result", "question": "Inspection result", "type": "Select", "values": ["Pass"]},
        {"label": "Photo", "question": "Photo", "type": "Image", "values": [{"identifier": "m-1", "contentType": "image/png", "bytes": "iVBORw0KGgo="}]},
    ]}]}],
}

FUNCTIONS = ["authorize", "callback", "webhook", "status", "sync", "process"]


def envelope(function, envelope):
    return bytes([FUNCTIONS.index(function)]) + json.dumps(envelope).encode()


def main():
    http = lambda method, url, headers, body: {"Data": {"req": {"Url": url, "Method": method, "Query": {}, "Headers": headers, "Body": body}}, "Metadata": {"sys": {"MethodName": "x"}}}
    write("envelope", "status", envelope("status", http("GET", "https://x/api/status", {"Accept": ["application/json"]}, None)))
    write("envelope", "webhook", envelope("webhook", http("POST", "https://x/api/webhook?code=k", {"Content-Type": ["application/json"]}, json.dumps(DOCUMENT))))
    write("envelope", "webhook-base64", envelope("webhook", http("POST", "https://x/api/webhook", {"Content-Type": ["application/octet-stream"]}, base64.b64encode(b"\x00\x01binary").decode())))
    write("envelope", "callback", envelope("callback", http("GET", "https://x/api/callback?state=s&code=c", {"Cookie": ["tcb_flow_x=v"]}, None)))
    write("envelope", "timer", envelope("sync", {"Data": {"timer": {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": {"Last": "2026-12-01T10:00:00Z", "Next": "2026-12-01T10:30:00Z"}, "IsPastDue": False}}, "Metadata": {}}))
    write("envelope", "queue", envelope("process", {"Data": {"msg": json.dumps(json.dumps({"push": "p-1"}))}, "Metadata": {"DequeueCount": "1", "Id": "\"m-1\"", "InsertionTime": "\"2026-12-01T10:00:00+00:00\""}}))

    write("callback_params", "code", "state=abcdefghijklmnop&code=0.AAAA-code&session_state=x")
    write("callback_params", "error", "error=access_denied&error_description=The+user+declined&state=abc")
    write("callback_params", "iss", "code=c&state=s&iss=https%3A%2F%2Flogin.microsoftonline.com%2Ft%2Fv2.0")
    write("callback_params", "twice", "code=a&code=b&state=s")

    write("token_response", "entra", {"token_type": "Bearer", "scope": "openid offline_access User.Read", "expires_in": 3599, "ext_expires_in": 3599, "refresh_in": 1800, "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.at", "refresh_token": "0.AAAA-refresh-token-value", "id_token": "eyJhbGciOiJSUzI1NiJ9.e30.sig"})
    write("token_response", "b2c", {"access_token": "b2c-access-token-123", "token_type": "Bearer", "expires_in": "3600", "refresh_token": "b2c-refresh-token-456", "refresh_token_expires_in": 1209600})
    write("token_response", "no-expiry", {"access_token": "plain-access-token-789", "token_type": "bearer"})
    write("token_response", "no-access-token", {"refresh_token": "rotated-refresh-token-000", "token_type": "Bearer"})

    base = {"iss": "https://issuer.example/", "aud": "bridge", "sub": "admin", "nonce": "n-0", "exp": 4000000000}
    push = {"iss": "https://issuer.example/", "aud": "api://bridge", "roles": ["Submissions.Push"], "exp": 4000000000}
    write("jwt", "genuine-id-token", jwt(base))
    write("jwt", "genuine-push", jwt(push))
    header_none = b64url(b'{"alg":"none"}')
    write("jwt", "alg-none", f"{header_none}.{b64url(json.dumps(base).encode())}.")
    write("jwt", "jwe", "a.b.c.d.e")

    write("webhook_body", "document", DOCUMENT)
    write("webhook_body", "wrapped", {"dataRecord": DOCUMENT})
    write("webhook_body", "template", {"identifier": "1234567890", "referenceNumber": "r-1", "formId": "form-1"})
    write("webhook_body", "custom-id", {"submission": {"id": "98765"}, "note": "WEBHOOK_ID_FIELD=submission.id"})

    write("list_page", "one", {"pageSize": 100, "pageNumber": 0, "totalNumberOfResults": 1, "totalNumberOfPages": 1, "pageData": [
        {"identifier": "1234567890", "referenceNumber": "r-1", "state": "Complete", "dataState": "COMPLETE", "serverReceiveDate": "2026-12-01T10:00:00Z", "formId": "form-1"}]})
    write("list_page", "numeric-id", {"totalNumberOfResults": 2, "totalNumberOfPages": 1, "pageData": [{"identifier": 1234567890}, {"identifier": "x_1-2"}]})
    write("list_page", "empty", {"totalNumberOfResults": 0, "totalNumberOfPages": 0, "pageData": []})

    write("document", "full", DOCUMENT)
    write("document", "wrapped", {"dataRecord": DOCUMENT})
    write("document", "minimal", {"identifier": "1"})

    for name, text in [("every-30-min", "0 */30 * * * *"), ("timespan", "01:00:00"), ("weekdays", "0 15 9 * * 1-5"), ("steps", "*/10 5-30/5 * * Jan-Mar *")]:
        write("schedule", name, text)

    write("settings", "entra", "OAUTH_PROVIDER=entra\nOAUTH_TENANT_ID=contoso.onmicrosoft.com\nOAUTH_CLIENT_ID=11111111-2222-3333-4444-555555555555\nOAUTH_CLIENT_SECRET=super-secret-value-123\nSYNC_SCHEDULE=0 */30 * * * *\n")
    write("settings", "azure", "STORE=azure\nAzureWebJobsStorage__accountName=acct\nKEYVAULT_URI=https://v.vault.azure.net\nWEBHOOK_AUTH=basic\nWEBHOOK_BASIC_PASSWORD=push-password-0123456789\n")
    write("settings", "wrong", "SYNC_SCHEDULE=bogus\nFUNCTION_KEY=short\nOAUTH_CLIENT_SECRET=x\nLOCAL_STORE_KEY=not-base64-secret!!\n")
    print(f"seeds written under {os.path.relpath(CORPUS, ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
