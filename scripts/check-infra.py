#!/usr/bin/env python3
"""Checks on infra/ that checkov does not make. Standard library only.

    python3 scripts/check-infra.py              # check the repository; exit 1 naming each failure
    python3 scripts/check-infra.py --self-test  # prove every check can fail (one fault per check)

Checks:
  modules       every `module x 'path'` exists, relative to the file that references it
  params        every `param` a .bicep file declares is used in that file
  module-params every parameter a module call passes exists in the module, and every module
                param without a default is passed
  settings      every setting the binary reads (src/config/settings.tsv, less what the host sets)
                is an app-setting name in the Bicep or on DELIBERATELY_NOT_SET below, never both
  flex          no Flex-deprecated setting or siteConfig property outside the EP-only vars
                (epOnlySettings, epSiteConfig), and those vars only on the Elastic Premium branch
  secrets       a secret setting's value is empty or a @Microsoft.KeyVault(...) reference
  roles         every role-definition GUID is the one its comment names (ROLE_TABLE), and only
                those roles are assigned
  scopes        every role assignment has `scope:` set to a resource symbol of its file
  host-json     host.json extensions.queues.maxDequeueCount == main.bicep maxDequeueCount default
  azure-yaml    azure.yaml services.api.dist is a .zip, and scripts/package.sh writes that path
                (skipped with a note while scripts/package.sh does not exist)
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

# ----------------------------------------------------------------------------- facts

# Settings the binary reads that the Bicep deliberately does not set, each with its reason.
DELIBERATELY_NOT_SET = {
    "LOCAL_STORE_KEY": "embedded store (STORE=local) only; with STORE=azure secrets live in Key Vault",
    "LOCAL_STORE_PATH": "embedded store (STORE=local) only",
    "LOCAL_STORE_SYNC": "embedded store (STORE=local) only",
    "FUNCTION_KEY": "standalone mode's key; under the Functions host the host owns the function keys",
    "AzureWebJobsStorage": "an account-key connection string; replaced by the identity-based AzureWebJobsStorage__* settings (shared keys are off)",
    "TLS_EXTRA_CA_FILE": "trusts a local simulator's test CA; refused next to any cloud endpoint",
    "IDENTITY_ENDPOINT": "set by the platform for the managed identity, never by the app",
    "MSI_ENDPOINT": "set by the platform (the older name of IDENTITY_ENDPOINT), never by the app",
    "OAUTH_CLIENT_CERTIFICATE_PATH": "needs a PEM file on the instance's disk, which Flex does not offer; the federated credential replaces it",
    "STANDALONE_MAX_CONNECTIONS": "standalone mode only; under the Functions host the host owns the connections",
    "STANDALONE_MAX_CONNECTIONS_PER_ADDRESS": "standalone mode only; under the Functions host the host owns the connections",
    "STANDALONE_HEADER_TIMEOUT_SECONDS": "standalone mode only; under the Functions host the host reads requests",
    "STANDALONE_BODY_TIMEOUT_SECONDS": "standalone mode only; under the Functions host the host reads requests",
    "TRUSTED_PROXY_HOPS": "its default under the host (1: the Functions front end appends the caller) is Azure's own",
    "WEBHOOK_CONNECTION_CLIENT_IDS": "per-connection push clients are the operator's to add once connections exist; the role gates pushes by default",
    "WEBHOOK_CONNECTION_SECRETS": "per-connection values for basic/header; the deploy's default is jwt",
    "WEBHOOK_MAX_BACKLOG_SECONDS": "its default (15 minutes) fits the queue's retry schedule",
    "WEBHOOK_MAX_TOKEN_LIFETIME_SECONDS": "its default (24 h) is above Entra's and managed identities' token lifetimes",
    "RESYNC_BUDGET_SHARE_PERCENT": "its default (half the day's budget) leaves the regular sync the other half",
    "MISSED_PUSH_GRACE_SECONDS": "its default (15 minutes) is longer than TrueContext takes to push",
    "MISSED_PUSH_ALERT_THRESHOLD": "its default (3 of one form) tells a lost push from a broken destination",
    "TRUECONTEXT_KEY_SECRET_*": "a family, one per API-key connection the operator adds (`tcbridge connection add`), each a Key Vault reference set then",
}

# Where app-setting names live: file (relative to infra/) -> the var blocks holding settings.
SETTINGS_VARS = {
    "main.bicep": ["productSettings"],
    "modules/functionapp.bicep": ["commonSettings", "epOnlySettings"],
}

# App settings and siteConfig properties that Flex Consumption deprecates or rejects (Learn
# "Flex Consumption plan deprecations"; ARM error 51021 lists), plus the EP-only package settings.
FLEX_FORBIDDEN = {
    # app settings
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_WORKER_RUNTIME_VERSION", "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID",
    "WEBSITE_CONTENTSHARE", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION", "WEBSITE_NODE_DEFAULT_VERSION",
    "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD", "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "WEBSITE_VNET_ROUTE_ALL", "WEBSITE_CONTENTOVERVNET", "WEBSITE_DNS_SERVER",
    "FUNCTIONS_WORKER_PROCESS_COUNT", "FUNCTIONS_MAX_HTTP_CONCURRENCY", "WEBSITE_TIME_ZONE", "TZ",
    # siteConfig properties
    "linuxFxVersion", "windowsFxVersion", "alwaysOn", "ftpsState", "use32BitWorkerProcess",
    "functionAppScaleLimit", "preWarmedInstanceCount", "minimumElasticInstanceCount",
    "vnetRouteAllEnabled", "netFrameworkVersion", "functionsRuntimeScaleMonitoringEnabled",
    "containerSize", "isReserved", "IsXenon",
}
EP_ONLY_VARS = {"epOnlySettings", "epSiteConfig"}
EP_CONDITION = "isElasticPremium"

# Settings whose value is a secret, in the Bicep: empty, or a Key Vault reference, nothing else.
# The secret ones of src/config/settings.tsv (read by `secret_settings` below), and the alert
# webhook's URL, which carries its own key in its path or query (Teams, Slack).
SECRET_SETTINGS_EXTRA = {"ALERT_WEBHOOK_URL"}


def secret_settings(root: Path) -> set[str]:
    names = set(SECRET_SETTINGS_EXTRA)
    for line in (root / "src" / "config" / "settings.tsv").read_text().splitlines():
        if line and not line.startswith("#") and not line.startswith("name\t"):
            name, _section, secret = line.split("\t")[:3]
            if secret == "yes":
                names.add(name)
    return names

# Built-in role names -> role definition GUIDs (docs/deploy.md gives the sources). Only these
# may be assigned: data-plane roles, nothing like Owner or Contributor.
ROLE_TABLE = {
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Queue Data Message Processor": "8a0f0c08-91a1-4084-bc3d-661d67233fed",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}

GUID = re.compile(r"'([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})'")
KV_REF = r"'@Microsoft\.KeyVault\((?:SecretUri|VaultName)=[^']*\)'"
SECRET_VALUE = re.compile(rf"^(?:''|{KV_REF}|[^?']+\?\s*(?:{KV_REF}|'')\s*:\s*(?:{KV_REF}|''))$")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ----------------------------------------------------------------------------- Bicep text


def strip_comments(text: str) -> str:
    """Remove // and /* */ comments outside strings; keep line breaks."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("'''", i):
            j = text.find("'''", i + 3)
            j = n if j < 0 else j + 3
            out.append(text[i:j]); i = j
        elif text[i] == "'":
            j = i + 1
            while j < n and text[j] != "'" and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1]); i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j)); i = j
        else:
            out.append(text[i]); i += 1
    return "".join(out)


def code_only(text: str) -> str:
    """strip_comments, then blank string contents except ${...} interpolations."""
    text = strip_comments(text)
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("'''", i):
            j = text.find("'''", i + 3)
            j = n if j < 0 else j + 3
            out.append("''" + "\n" * text.count("\n", i, j)); i = j
        elif text[i] == "'":
            j, buf = i + 1, ["'"]
            while j < n and text[j] != "'" and text[j] != "\n":
                if text[j] == "\\":
                    j += 2
                elif text.startswith("${", j):
                    depth, k = 0, j
                    while k < n:
                        if text[k] == "{":
                            depth += 1
                        elif text[k] == "}":
                            depth -= 1
                            if depth == 0:
                                break
                        k += 1
                    buf.append(" " + text[j + 2:k] + " "); j = k + 1
                else:
                    j += 1
            buf.append("'"); out.append("".join(buf)); i = j + 1
        else:
            out.append(text[i]); i += 1
    return "".join(out)


def block_at(text: str, open_index: int) -> str:
    """The text of the {...} or [...] block starting at open_index (strings skipped)."""
    pairs = {"{": "}", "[": "]", "(": ")"}
    depth, i, n = 0, open_index, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            j = i + 1
            while j < n and text[j] != "'":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c in pairs:
            depth += 1
        elif c in pairs.values():
            depth -= 1
            if depth == 0:
                return text[open_index:i + 1]
        i += 1
    return text[open_index:]


def top_level_entries(block: str) -> list[tuple[str, str]]:
    """(key, value text) for each key at depth 1 of an object block `{ ... }`."""
    entries: list[tuple[str, list[str]]] = []
    depth, line_start = 0, True
    i, n = 0, len(block)
    cur: list[str] | None = None
    while i < n:
        c = block[i]
        if line_start and depth == 1:
            m = re.match(r"[ \t]*('?[A-Za-z_][A-Za-z0-9_\-]*'?)[ \t]*:(?!:)", block[i:])
            if m:
                entries.append((m.group(1).strip("'"), []))
                cur = entries[-1][1]
                i += m.end()
                line_start = False
                continue
        line_start = c == "\n"
        if c == "'":
            j = i + 1
            while j < n and block[j] != "'":
                j += 2 if block[j] == "\\" else 1
            if cur is not None and depth >= 1:
                cur.append(block[i:j + 1])
            i = j + 1
            continue
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
        if cur is not None and depth >= 1 and not (depth == 0):
            cur.append(c)
        i += 1
    return [(k, "".join(v).strip()) for k, v in entries]


class BicepFile:
    def __init__(self, path: Path, infra: Path):
        self.path = path
        self.rel = path.relative_to(infra).as_posix()
        self.raw = path.read_text()
        self.nocomment = strip_comments(self.raw)
        self.code = code_only(self.raw)

    def params(self) -> dict[str, bool]:
        """name -> has a default."""
        found = {}
        for m in re.finditer(r"^[ \t]*param[ \t]+(\w+)[ \t]+\w+\??([ \t]*=.*)?$", self.nocomment, re.M):
            found[m.group(1)] = bool(m.group(2))
        return found

    def resources(self) -> dict[str, tuple[str, str]]:
        """symbol -> (type, body)."""
        found = {}
        for m in re.finditer(r"^[ \t]*resource[ \t]+(\w+)[ \t]+'([^'@]+)@[^']*'[^\n]*?=", self.nocomment, re.M):
            brace = self.nocomment.find("{", m.end())
            found[m.group(1)] = (m.group(2), block_at(self.nocomment, brace) if brace >= 0 else "")
        return found

    def modules(self):
        """(symbol, path, body, line) for each module call."""
        for m in re.finditer(r"^[ \t]*module[ \t]+(\w+)[ \t]+'([^']+)'[ \t]*=", self.nocomment, re.M):
            brace = self.nocomment.find("{", m.end())
            line = self.nocomment.count("\n", 0, m.start()) + 1
            yield m.group(1), m.group(2), block_at(self.nocomment, brace), line

    def var_block(self, name: str) -> str | None:
        m = re.search(rf"^var[ \t]+{name}[ \t]*=[ \t]*\{{", self.nocomment, re.M)
        if not m:
            return None
        return block_at(self.nocomment, m.end() - 1)


# ----------------------------------------------------------------------------- checks


class Report:
    def __init__(self):
        self.failures: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def fail(self, check: str, message: str):
        self.failures.append((check, message))

    def note(self, message: str):
        self.notes.append(message)


def load_bicep(infra: Path) -> dict[str, BicepFile]:
    return {f.relative_to(infra).as_posix(): BicepFile(f, infra) for f in sorted(infra.rglob("*.bicep"))}


def check_modules(files, infra, r: Report):
    for bf in files.values():
        for sym, ref, body, line in bf.modules():
            if re.match(r"^(br|ts)[:/]", ref):
                continue
            target = (bf.path.parent / ref).resolve()
            if not target.is_file():
                r.fail("modules", f"{bf.rel}:{line}: module {sym} references {ref}, which does not exist")
                continue
            mod = BicepFile(target, infra)
            declared = mod.params()
            pm = re.search(r"(^|\n)[ \t]*params[ \t]*:[ \t]*\{", body)
            passed = set()
            if pm:
                passed = {k for k, _ in top_level_entries(block_at(body, pm.end() - 1))}
            for p in sorted(passed - set(declared)):
                r.fail("module-params", f"{bf.rel}:{line}: module {sym} passes {p}, which {mod.rel} does not declare")
            for p in sorted(k for k, has_default in declared.items() if not has_default and k not in passed):
                r.fail("module-params", f"{bf.rel}:{line}: module {sym} does not pass {p}, which {mod.rel} requires (no default)")


def check_params_used(files, r: Report):
    for bf in files.values():
        lines = bf.code.split("\n")
        for name in bf.params():
            decl = re.compile(rf"^[ \t]*param[ \t]+{name}\b")
            key = re.compile(rf"^[ \t]*{name}[ \t]*:(?!:)")
            use = re.compile(rf"(?<![\w.]){name}\b")
            used = False
            for ln in lines:
                if decl.match(ln):
                    continue
                probe = key.sub("", ln, count=1)
                if use.search(probe):
                    used = True
                    break
            if not used:
                r.fail("params", f"{bf.rel}: param {name} is declared but never used")


def settings_read(root: Path) -> set[str]:
    """Every setting the binary reads, from its one table (src/config/settings.tsv), except
    what the Functions host or the platform sets itself (section "host")."""
    names = set()
    for line in (root / "src" / "config" / "settings.tsv").read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("name\t"):
            continue
        name, section, _secret = line.split("\t")[:3]
        if section != "host":
            names.add(name)
    return names


def bicep_settings(files, r: Report) -> dict[str, list[tuple[str, str, str]]]:
    """setting name -> [(file, var, value)]."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    for rel, var_names in SETTINGS_VARS.items():
        bf = files.get(rel)
        if bf is None:
            r.fail("settings", f"{rel} is missing (it holds the app settings {', '.join(var_names)})")
            continue
        for var in var_names:
            block = bf.var_block(var)
            if block is None:
                r.fail("settings", f"{rel}: var {var} (an app-settings object) is missing")
                continue
            for key, value in top_level_entries(block):
                found.setdefault(key, []).append((rel, var, value))
    return found


def check_settings(files, root: Path, r: Report):
    read = settings_read(root)
    setting_map = bicep_settings(files, r)
    set_names = set(setting_map)
    for name in sorted(read - set_names - set(DELIBERATELY_NOT_SET)):
        r.fail("settings", f"{name} is read by the binary but is neither an app setting in the Bicep nor on the deliberately-not-set list")
    for name in sorted(set_names & set(DELIBERATELY_NOT_SET)):
        where = ", ".join(f"{f} {v}" for f, v, _ in setting_map[name])
        r.fail("settings", f"{name} is on the deliberately-not-set list ({DELIBERATELY_NOT_SET[name]}) but is set in {where}")
    for name in sorted(set(DELIBERATELY_NOT_SET) - read):
        r.fail("settings", f"deliberately-not-set entry {name} is not a setting in src/config/settings.tsv (stale entry)")
    for name, places in sorted(setting_map.items()):
        # union() lets a later object win silently: a name belongs to one settings object.
        if len(places) > 1:
            where = ", ".join(f"{f} {v}" for f, v, _ in places)
            r.fail("settings", f"{name} is set more than once ({where})")


def check_flex(files, r: Report):
    for rel, bf in files.items():
        # 1. Forbidden names only inside EP-only vars.
        allowed_spans = []
        for var in EP_ONLY_VARS:
            m = re.search(rf"^var[ \t]+{var}[ \t]*=[ \t]*\{{", bf.nocomment, re.M)
            if m:
                blk = block_at(bf.nocomment, m.end() - 1)
                allowed_spans.append((m.start(), m.end() - 1 + len(blk)))
        for m in re.finditer(r"^[ \t]*'?([A-Za-z_][A-Za-z0-9_]*)'?[ \t]*:(?!:)", bf.nocomment, re.M):
            name = m.group(1)
            if name in FLEX_FORBIDDEN and not any(a <= m.start() < b for a, b in allowed_spans):
                line = bf.nocomment.count("\n", 0, m.start()) + 1
                r.fail("flex", f"{rel}:{line}: {name} is set outside the Elastic Premium-only vars ({', '.join(sorted(EP_ONLY_VARS))}); Flex Consumption deprecates or rejects it")
        # 2. EP-only vars used only on the EP branch.
        code_lines = bf.code.split("\n")
        resource_headers = []
        for m in re.finditer(r"^[ \t]*(resource|module)[ \t]+\w+[^\n]*", bf.code, re.M):
            brace = bf.code.find("{", m.start())
            blk = block_at(bf.code, brace) if brace >= 0 else ""
            resource_headers.append((m.start(), brace + len(blk), m.group(0)))
        offset = 0
        for ln in code_lines:
            start = offset
            offset += len(ln) + 1
            for var in EP_ONLY_VARS:
                if not re.search(rf"\b{var}\b", ln) or re.match(rf"^var[ \t]+{var}\b", ln):
                    continue
                lineno = bf.code.count("\n", 0, start) + 1
                guard = None
                t = re.search(r"\b(isElasticPremium|isFlex)\s*\?(.*?)\s:\s(.*)$", ln)
                if t:
                    ep_branch, other = (t.group(2), t.group(3)) if t.group(1) == EP_CONDITION else (t.group(3), t.group(2))
                    if re.search(rf"\b{var}\b", other):
                        r.fail("flex", f"{rel}:{lineno}: {var} is used on the Flex branch of `{t.group(1)} ? ... : ...`")
                    guard = bool(re.search(rf"\b{var}\b", ep_branch))
                if not guard:
                    enclosing = [h for a, b, h in resource_headers if a <= start < b]
                    if any(EP_CONDITION in h for h in enclosing):
                        guard = True
                if not guard:
                    r.fail("flex", f"{rel}:{lineno}: {var} is used without the {EP_CONDITION} guard")
        if any(re.search(rf"\b{v}\b", bf.code) for v in EP_ONLY_VARS):
            if not re.search(rf"^var[ \t]+{EP_CONDITION}[ \t]*=[ \t]*planKind[ \t]*==[ \t]*'ElasticPremium'[ \t]*$", bf.nocomment, re.M):
                r.fail("flex", f"{rel}: var {EP_CONDITION} must be exactly `planKind == 'ElasticPremium'`")


def check_secrets(files, root: Path, r: Report):
    secret_names = secret_settings(root)
    for rel, bf in files.items():
        for m in re.finditer(r"^[ \t]*'?([A-Za-z_][A-Za-z0-9_]*)'?[ \t]*:(?!:)[ \t]*(.*)$", bf.nocomment, re.M):
            name, value = m.group(1), m.group(2).strip()
            if name not in secret_names:
                continue
            line = bf.nocomment.count("\n", 0, m.start()) + 1
            if not SECRET_VALUE.match(value):
                r.fail("secrets", f"{rel}:{line}: {name} must be empty or a Key Vault reference (@Microsoft.KeyVault(SecretUri=...)), not `{value}`")


def check_roles(files, r: Report):
    for rel, bf in files.items():
        raw_lines = bf.raw.split("\n")
        for i, ln in enumerate(raw_lines):
            for g in GUID.findall(strip_comments(ln)):
                comment = ln.split("//", 1)[1].strip() if "//" in ln else ""
                if not comment and i > 0 and raw_lines[i - 1].strip().startswith("//"):
                    comment = raw_lines[i - 1].strip()[2:].strip()
                if not comment:
                    r.fail("roles", f"{rel}:{i + 1}: GUID {g} has no comment naming its role")
                    continue
                if comment not in ROLE_TABLE:
                    r.fail("roles", f"{rel}:{i + 1}: GUID {g} is commented '{comment}', which is not a role this check knows (or may assign)")
                elif ROLE_TABLE[comment].lower() != g.lower():
                    r.fail("roles", f"{rel}:{i + 1}: GUID {g} is not {comment} (that is {ROLE_TABLE[comment]})")
        for sym, (typ, body) in bf.resources().items():
            if typ.lower() != "microsoft.authorization/roleassignments":
                continue
            m = re.search(r"roleDefinitionId[ \t]*:[ \t]*(.*)", body)
            if not m:
                r.fail("roles", f"{rel}: role assignment {sym} has no roleDefinitionId")
                continue
            value = m.group(1)
            if not (re.search(r"\broles\.\w+", value) or GUID.search(value)):
                r.fail("roles", f"{rel}: role assignment {sym} takes its role from `{value.strip()}`, not from the commented roles map")


def check_scopes(files, r: Report):
    for rel, bf in files.items():
        resources = bf.resources()
        for sym, (typ, body) in resources.items():
            if typ.lower() != "microsoft.authorization/roleassignments":
                continue
            entries = dict(top_level_entries(body))
            scope = entries.get("scope")
            if scope is None:
                r.fail("scopes", f"{rel}: role assignment {sym} has no scope (it would apply to the whole deployment scope)")
            elif not IDENT.fullmatch(scope) or scope not in resources:
                r.fail("scopes", f"{rel}: role assignment {sym} has scope `{scope}`; it must be a resource symbol of this file, not a resource group or subscription")


def check_host_json(files, root: Path, r: Report):
    host = json.loads((root / "host.json").read_text())
    host_value = host.get("extensions", {}).get("queues", {}).get("maxDequeueCount")
    main = files.get("main.bicep")
    m = re.search(r"^[ \t]*param[ \t]+maxDequeueCount[ \t]+int[ \t]*=[ \t]*(\d+)", main.nocomment if main else "", re.M)
    if not m:
        r.fail("host-json", "main.bicep has no `param maxDequeueCount int = <n>`")
    elif host_value != int(m.group(1)):
        r.fail("host-json", f"host.json extensions.queues.maxDequeueCount is {host_value}, main.bicep maxDequeueCount defaults to {m.group(1)}")


def check_azure_yaml(root: Path, r: Report):
    path = root / "azure.yaml"
    if not path.is_file():
        r.fail("azure-yaml", "azure.yaml is missing")
        return
    m = re.search(r"^[ \t]+dist:[ \t]*['\"]?([^'\"\s#]+)", path.read_text(), re.M)
    if not m:
        r.fail("azure-yaml", "azure.yaml has no services.api.dist (azd requires it for language: custom)")
        return
    dist = m.group(1)
    if not dist.endswith(".zip"):
        r.fail("azure-yaml", f"azure.yaml dist {dist} is not a .zip (azd would zip the folder itself and lose the exec bit before 1.26)")
    package = root / "scripts" / "package.sh"
    if not package.is_file():
        r.note(f"azure-yaml: scripts/package.sh does not exist yet; not checked that it writes {dist}")
    elif dist not in package.read_text():
        r.fail("azure-yaml", f"azure.yaml dist is {dist}, but scripts/package.sh never mentions that path")


def run_checks(root: Path) -> Report:
    r = Report()
    infra = root / "infra"
    files = load_bicep(infra)
    if "main.bicep" not in files:
        r.fail("modules", "infra/main.bicep is missing")
        return r
    check_modules(files, infra, r)
    check_params_used(files, r)
    check_settings(files, root, r)
    check_flex(files, r)
    check_secrets(files, root, r)
    check_roles(files, r)
    check_scopes(files, r)
    check_host_json(files, root, r)
    check_azure_yaml(root, r)
    return r


# ----------------------------------------------------------------------------- self-test


def _edit(rel: str, old: str, new: str, count: int = 1):
    def apply(root: Path):
        p = root / rel
        text = p.read_text()
        if old not in text:
            raise AssertionError(f"self-test anchor not found in {rel}: {old!r}")
        p.write_text(text.replace(old, new, count))
    return apply


def _delete(rel: str):
    def apply(root: Path):
        (root / rel).unlink()
    return apply


def _append(rel: str, text: str):
    def apply(root: Path):
        p = root / rel
        p.write_text(p.read_text() + text)
    return apply


def _write(rel: str, text: str):
    def apply(root: Path):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return apply


def _json_set(rel: str, path: list[str], value):
    def apply(root: Path):
        p = root / rel
        d = json.loads(p.read_text())
        cur = d
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
        p.write_text(json.dumps(d, indent=2))
    return apply


FAULTS = [
    ("modules", "delete a module file", _delete("infra/modules/rbac.bicep")),
    ("params", "add an unused param", _append("infra/modules/identity.bicep", "\nparam unusedProbe string = 'x'\n")),
    ("settings", "remove an app setting", _edit("infra/main.bicep", "  SYNC_SCHEDULE: syncSchedule\n", "")),
    ("settings", "the binary reads a new setting", _append("src/config/settings.tsv", "NEW_SETTING_PROBE\tservice\tno\n")),
    ("settings", "set a deliberately-not-set setting", _edit("infra/main.bicep", "  RUST_LOG: rustLog\n", "  RUST_LOG: rustLog\n  LOCAL_STORE_PATH: '/tmp/store'\n")),
    ("roles", "change a role GUID", _edit("infra/modules/rbac.bicep", "'974c5e8b-45b9-4653-ba55-5f855dd0fb88'", "'974c5e8b-45b9-4653-ba55-5f855dd0fb89'")),
    ("roles", "assign a role that is not allowed", _edit("infra/modules/rbac.bicep", "'0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor", "'b24988ac-6180-42a0-ab88-20f7382dd24c' // Contributor")),
    ("secrets", "put a literal secret", _edit("infra/modules/functionapp.bicep", "  OAUTH_CLIENT_SECRET: contains(", "  OAUTH_CLIENT_SECRET: 'hunter2-literal'\n  OAUTH_CLIENT_SECRET_PROBE: contains(")),
    ("flex", "a Flex-deprecated setting in the common settings", _edit("infra/modules/functionapp.bicep", "  STORE: 'azure'\n", "  STORE: 'azure'\n  FUNCTIONS_WORKER_RUNTIME: 'custom'\n")),
    ("flex", "EP-only settings on the Flex branch", _edit("infra/modules/functionapp.bicep", ": union(productSettings, commonSettings)\n", ": union(productSettings, commonSettings, epOnlySettings)\n")),
    ("scopes", "a role assignment scoped to the resource group", _edit("infra/modules/rbac.bicep", "  scope: storage\n", "  scope: resourceGroup()\n")),
    ("module-params", "pass a parameter the module lacks", _edit("infra/main.bicep", "    name: 'id-${resourceToken}'\n", "    name: 'id-${resourceToken}'\n    bogusProbe: 'x'\n")),
    ("module-params", "leave out a required module parameter", _edit("infra/main.bicep", "    name: 'id-${resourceToken}'\n    location: location\n    tags: allTags\n", "    name: 'id-${resourceToken}'\n    location: location\n")),
    ("host-json", "host.json disagrees with maxDequeueCount", _json_set("host.json", ["extensions", "queues", "maxDequeueCount"], 7)),
    ("azure-yaml", "azure.yaml without dist", _edit("azure.yaml", "    dist: dist/functionapp.zip\n", "")),
    ("azure-yaml", "scripts/package.sh writes another path", _write("scripts/package.sh", "#!/bin/sh\nzip -r dist/other.zip .\n")),
    ("settings", "a setting set twice", _edit("infra/main.bicep", "  RUST_LOG: rustLog\n", "  RUST_LOG: rustLog\n  STORE: 'local'\n")),
    ("flex", "an EP-only siteConfig property on the site", _edit("infra/modules/functionapp.bicep", "      http20Enabled: true\n", "      http20Enabled: true\n      alwaysOn: true\n")),
]


def _copy_tree(root: Path, dest: Path):
    shutil.copytree(root / "infra", dest / "infra")
    (dest / "src" / "config").mkdir(parents=True)
    shutil.copy(root / "src" / "config" / "settings.tsv", dest / "src" / "config" / "settings.tsv")
    for rel in ("host.json", "azure.yaml", "scripts/package.sh"):
        if (root / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / rel, dest / rel)


def self_test(root: Path) -> int:
    problems = 0
    with tempfile.TemporaryDirectory(prefix="check-infra-") as tmp:
        base = Path(tmp) / "clean"
        _copy_tree(root, base)
        clean = run_checks(base)
        if clean.failures:
            print("self-test: the unmodified copy already fails; fix that first:")
            for c, m in clean.failures:
                print(f"  FAIL [{c}] {m}")
            return 1
        print("self-test: unmodified copy passes")
        for i, (check, what, fault) in enumerate(FAULTS):
            work = Path(tmp) / f"fault{i}"
            _copy_tree(root, work)
            try:
                fault(work)
            except AssertionError as e:
                print(f"  BROKEN  {what}: {e}")
                problems += 1
                continue
            r = run_checks(work)
            caught = [m for c, m in r.failures if c == check]
            if caught:
                print(f"  caught  [{check}] {what}: {caught[0]}")
            else:
                print(f"  MISSED  [{check}] {what} (failures: {r.failures})")
                problems += 1
    print(f"self-test: {len(FAULTS) - problems} of {len(FAULTS)} faults caught")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true", help="inject one fault per check into a copy and require each to be caught")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root")
    args = ap.parse_args()
    root = args.root.resolve()
    if args.self_test:
        return self_test(root)
    r = run_checks(root)
    for n in r.notes:
        print(f"note: {n}")
    for c, m in r.failures:
        print(f"FAIL [{c}] {m}")
    if r.failures:
        print(f"check-infra: {len(r.failures)} failure(s)")
        return 1
    print("check-infra: ok (modules, params, module-params, settings, flex, secrets, roles, scopes, host-json, azure-yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
