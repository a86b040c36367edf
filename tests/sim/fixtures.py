"""Deterministic generators of realistic Huntress data (same seed -> same data).

All IPs are from the documentation ranges (RFC 5737), AWS account ids are the
documentation example, and names are invented.
"""

from __future__ import annotations

import json
import random
import uuid as _uuid
from datetime import datetime, timedelta, timezone

from .timeutil import dt_to_ns, format_ns, iso_seconds

__all__ = ["siem_events", "organizations", "agents", "incident_reports", "signals", "escalations", "account"]

_BASE_TIME = datetime(2024, 1, 15, 9, 0, 0, tzinfo=timezone.utc)

_FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
          "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor"]
_ORG_NAMES = ["Acme Dental", "Blue Harbor Logistics", "Cedar Ridge Law", "Delta Pines Clinic",
              "Evergreen Credit Union", "Foxglove Architects", "Granite Peak Schools",
              "Harborview Realty", "Ironwood Manufacturing", "Juniper Accounting",
              "Kestrel Insurance", "Lakeshore Veterinary", "Maple Street Bakery",
              "Northwind Traders", "Oakmont Family Practice", "Pioneer Plumbing"]
_DOMAINS = ["ACME", "CORP", "WORKGROUP", "BLUEHARBOR", "CEDARLAW"]


def _rid(rng: random.Random) -> str:
    return str(_uuid.UUID(int=rng.getrandbits(128), version=4))


def _ip(rng: random.Random) -> str:
    net = rng.choice(["192.0.2", "198.51.100", "203.0.113"])
    return f"{net}.{rng.randint(1, 254)}"


def _host(rng: random.Random, kind: str = "windows") -> str:
    if kind == "windows":
        return rng.choice(["DESKTOP", "LAPTOP", "WS", "SRV-DC", "SRV-FS"]) + "-" + \
            "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(6))
    return rng.choice(["web", "db", "build", "mail"]) + f"-{rng.randint(1, 40):02d}"


def account(account_id: int = 5, name: str = "Demo MSP", subdomain: str = "demomsp") -> dict:
    """An Account object (shape of the REST spec's Account definition)."""
    return {
        "id": account_id,
        "name": name,
        "subdomain": subdomain,
        "status": "enabled",
        "support_type": "huntress_supported",
        "neighborhood_watch": {"edr": 10, "ispm": 10, "itdr": 10, "sat": 10, "siem": 10},
        "billing_address": None,
        "shipping_address": None,
    }


# ---------------------------------------------------------------------------
# REST objects
# ---------------------------------------------------------------------------

def organizations(n: int, account_id: int = 5, seed: int = 0) -> list:
    """Organization objects with the field names of the REST spec."""
    rng = random.Random(f"orgs-{seed}")
    ids = sorted(rng.sample(range(1000, 99999), n))
    out = []
    for i, oid in enumerate(ids):
        base = _ORG_NAMES[i % len(_ORG_NAMES)]
        name = base if i < len(_ORG_NAMES) else f"{base} {i // len(_ORG_NAMES) + 1}"
        key = "".join(ch for ch in name.lower() if ch.isalnum())[:20]
        created = _BASE_TIME - timedelta(days=rng.randint(30, 900), seconds=rng.randint(0, 86399))
        updated = created + timedelta(days=rng.randint(0, 29), seconds=rng.randint(0, 86399))
        out.append({
            "id": oid,
            "name": name,
            "key": key,
            "account_id": account_id,
            "created_at": iso_seconds(created),
            "updated_at": iso_seconds(updated),
            "agents_count": rng.randint(0, 250),
            "incident_reports_count": rng.randint(0, 40),
            "logs_sources_count": rng.randint(0, 12),
            "billable_identity_count": rng.randint(0, 300),
            "sat_learner_count": rng.randint(0, 200),
            "identity_provider_tenant_id": _rid(rng),
            "microsoft_365_tenant_id": _rid(rng),
            "microsoft_365_users_count": rng.randint(0, 300),
            "report_recipients": [f"it@{key}.example.com"],
            "notify_emails": [f"alerts@{key}.example.com"],
        })
    return out


_WIN_OS = [("Windows 11 Pro", 10, 0, "22631"), ("Windows 10 Enterprise", 10, 0, "19045"),
           ("Windows Server 2022 Standard", 10, 0, "20348"), ("Windows Server 2019 Datacenter", 10, 0, "17763")]
_MAC_OS = [("macOS 14.5", 14, 5, 0), ("macOS 15.1.1", 15, 1, 1)]
_LINUX_OS = ["Ubuntu 22.04.4 LTS", "Red Hat Enterprise Linux 9.3", "Debian GNU/Linux 12"]


def agents(n: int, orgs: list, seed: int = 0, now: datetime | None = None) -> list:
    """Agent objects (REST spec's Agent definition). ~15% are stale (last
    callback more than a day before `now`); isolation shows in firewall_status
    ("Isolated", "Pending Isolation", ...) as in the spec."""
    rng = random.Random(f"agents-{seed}")
    now = now or datetime.now(timezone.utc)
    account_id = orgs[0].get("account_id", 5) if orgs else 5
    out = []
    next_id = 100000 + rng.randint(0, 1000)
    for _ in range(n):
        next_id += rng.randint(1, 9)
        org = rng.choice(orgs) if orgs else {"id": 1, "account_id": account_id}
        r = rng.random()
        platform = "windows" if r < 0.7 else ("darwin" if r < 0.9 else "linux")
        created = now - timedelta(days=rng.randint(5, 700), seconds=rng.randint(0, 86399))
        stale = rng.random() < 0.15
        last_cb = now - (timedelta(days=rng.randint(2, 60)) if stale else timedelta(seconds=rng.randint(5, 3600)))
        a = {
            "id": next_id,
            "account_id": org.get("account_id", account_id),
            "organization_id": org["id"],
            "created_at": iso_seconds(created),
            "updated_at": iso_seconds(max(created, last_cb - timedelta(minutes=rng.randint(0, 300)))),
            "last_callback_at": iso_seconds(last_cb),
            "platform": platform,
            "version": rng.choice(["0.13.230", "0.13.246", "0.14.12", "0.14.20"]),
            "edr_version": rng.choice(["0.3.20", "0.3.28", "0.4.2", None]) if platform != "linux" else None,
            "arch": rng.choice(["x86_64", "x86_64", "arm64"]),
            "external_ip": _ip(rng),
            "ipv4_address": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "mac_addresses": [":".join(f"{rng.randint(0, 255):02x}" for _ in range(6))],
            "serial_number": "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(10)),
            "tags": rng.sample(["Server", "Workstation", "Production", "Finance", "Remote"], rng.randint(0, 2)),
        }
        if platform == "windows":
            os_name, major, minor, build = rng.choice(_WIN_OS)
            a.update({
                "hostname": _host(rng, "windows"),
                "domain_name": rng.choice(_DOMAINS),
                "os": os_name, "os_major": major, "os_minor": minor, "os_patch": 0,
                "os_build_version": build, "win_build_number": int(build),
                "version_number": 720899, "service_pack_major": 0, "service_pack_minor": 0,
                "defender_status": rng.choices(["Healthy", "Unhealthy", "Disabled", "Incompatible"], [7, 1, 1, 1])[0],
                "defender_substatus": rng.choice(["Up to date", "Out of date", "Scan overdue"]),
                "defender_policy_status": rng.choice(["Compliant", "Non-compliant", "Pending"]),
                "last_survey_at": iso_seconds(last_cb - timedelta(minutes=rng.randint(0, 600))),
                "firewall_status": rng.choices(
                    ["Enabled", "Disabled", "Isolated", "Pending Isolation", "Pending Release"], [12, 4, 1, 1, 1])[0],
                "tamper_protection_configured": rng.random() < 0.8,
            })
            a["tamper_protection_actual"] = (a["tamper_protection_configured"] if rng.random() < 0.9
                                             else (None if rng.random() < 0.5 else not a["tamper_protection_configured"]))
        elif platform == "darwin":
            os_name, major, minor, patch = rng.choice(_MAC_OS)
            a.update({
                "hostname": rng.choice(_FIRST) + "-macbook",
                "domain_name": None,
                "os": os_name, "os_major": major, "os_minor": minor, "os_patch": patch,
                "os_build_version": rng.choice(["23F79", "24B91"]),
                "defender_status": None, "defender_substatus": None, "defender_policy_status": None,
                "last_survey_at": None,
                "firewall_status": rng.choice(["Enabled", "Disabled"]),
                "tamper_protection_configured": None, "tamper_protection_actual": None,
            })
        else:
            a.update({
                "hostname": _host(rng, "linux"),
                "domain_name": None,
                "os": rng.choice(_LINUX_OS), "os_major": None, "os_minor": None, "os_patch": None,
                "os_build_version": None,
                "defender_status": None, "defender_substatus": None, "defender_policy_status": None,
                "last_survey_at": None,
                "firewall_status": "Disabled",
                "tamper_protection_configured": None, "tamper_protection_actual": None,
            })
        out.append(a)
    return out


_INDICATORS = ["footholds", "monitored_files", "process_detections", "antivirus_detections",
               "ransomware_canaries", "managed_identity", "siem_detections", "mde_detections"]


def incident_reports(n: int, orgs: list, agents: list, seed: int = 0,
                     now: datetime | None = None) -> list:
    """IncidentReport objects (REST spec's IncidentReport definition)."""
    rng = random.Random(f"incidents-{seed}")
    now = now or datetime.now(timezone.utc)
    org_by_id = {o["id"]: o for o in orgs}
    out = []
    next_id = 5000 + rng.randint(0, 100)
    for _ in range(n):
        next_id += rng.randint(1, 5)
        ag = rng.choice(agents) if agents else None
        org = org_by_id.get(ag["organization_id"]) if ag else (rng.choice(orgs) if orgs else {"id": 1})
        org = org or {"id": ag["organization_id"], "name": "Unknown"}
        severity = rng.choices(["low", "high", "critical"], [5, 4, 1])[0]
        status = rng.choices(["sent", "closed", "dismissed"], [4, 5, 1])[0]
        sent = now - timedelta(days=rng.randint(0, 90), seconds=rng.randint(0, 86399))
        status_upd = sent + timedelta(hours=rng.randint(0, 72)) if status != "sent" else sent
        status_upd = min(status_upd, now)
        closed = status_upd if status == "closed" else None
        updated = min(now, max(status_upd, sent + timedelta(minutes=rng.randint(0, 600))))
        inds = sorted(rng.sample(_INDICATORS, rng.randint(1, 2)))
        host = ag["hostname"] if ag else "m365"
        platform = ag["platform"] if ag else rng.choice(["microsoft_365", "google", "other"])
        remediation_count = rng.randint(0, 3)
        out.append({
            "id": next_id,
            "account_id": org.get("account_id", 5),
            "organization_id": org["id"],
            "agent_id": ag["id"] if ag else None,
            "severity": severity,
            "status": status,
            "platform": platform,
            "indicator_types": inds,
            "indicator_counts": {k: (rng.randint(1, 4) if k in inds else 0) for k in
                                 ("footholds", "monitored_files", "process_detections",
                                  "ransomware_canaries", "antivirus_detections")},
            "subject": f"{severity.upper()} - Incident on {host} ({org.get('name', org['id'])})",
            "summary": rng.choice([
                "Huntress detected a malicious scheduled task on this host. Remove the task and the file listed below.",
                "A persistent foothold was found in the Run key. The binary is unsigned and beacons to a known C2 domain.",
                "Suspicious PowerShell launched from an Office macro. The process tree and remediation steps are below.",
                "Multiple failed sign-ins followed by a successful login from an unusual country.",
            ]),
            "body": "<p>" + " ".join(rng.choice(_FIRST) for _ in range(40)) + "</p>",
            "remediations": {"total_count": remediation_count, "has_more": False, "items": [
                {"id": next_id * 10 + j, "type": "manual", "action": "Delete File",
                 "parameters": [{"name": "path", "description": "c:\\users\\public\\updater.exe"}],
                 "status": rng.choice(["completed", "pending"]),
                 "approved_at": iso_seconds(sent), "completed_at": iso_seconds(status_upd)}
                for j in range(remediation_count)]},
            "sent_at": iso_seconds(sent),
            "status_updated_at": iso_seconds(status_upd),
            "updated_at": iso_seconds(updated),
            "closed_at": iso_seconds(closed) if closed else None,
        })
    return out


def signals(n: int, orgs: list, agents: list, seed: int = 0, now: datetime | None = None) -> list:
    """Signal objects (REST spec's Signal definition)."""
    rng = random.Random(f"signals-{seed}")
    now = now or datetime.now(timezone.utc)
    out = []
    for i in range(n):
        ag = rng.choice(agents) if agents else None
        org = next((o for o in orgs if ag and o["id"] == ag["organization_id"]), orgs[0] if orgs else {"id": 1, "name": "Org"})
        created = now - timedelta(days=rng.randint(0, 30), seconds=rng.randint(0, 86399))
        status = rng.choice(["reported", "closed"])
        name = rng.choice(["Firewall Disabled via Netsh", "Suspicious LSASS Access", "New Admin Account Created"])
        out.append({
            "id": 70000 + i * 3 + rng.randint(0, 2),
            "name": name,
            "type": rng.choice(["Process Insights", "Managed ITDR", "SIEM", "Antivirus"]),
            "status": status,
            "created_at": iso_seconds(created),
            "updated_at": iso_seconds(created + timedelta(minutes=rng.randint(0, 300))),
            "investigated_at": iso_seconds(min(now, created + timedelta(minutes=rng.randint(1, 300)))),
            "investigation_context": "False Positive, Business Accepted Risk" if status == "closed" else None,
            "entity": {"id": ag["id"] if ag else 0, "name": ag["hostname"] if ag else "n/a", "type": "agent"},
            "organization": {"id": org["id"], "name": org.get("name", "")},
            "details": {"rule_name": name, "username": rng.choice(_FIRST),
                        "process_name": "C:\\WINDOWS\\system32\\netsh.exe",
                        "command_line": "NetSh.exe advfirewall set allprofiles state off"},
        })
    return out


_ESCALATION_KINDS = [("Environmental Issue", "Defender Disabled", ""),
                     ("Environmental Issue", "Log source stopped reporting", ""),
                     ("Unexpected Country Access", "Sign-in from an unexpected country", "US"),
                     ("Unexpected Country Access", "Sign-in from an unexpected country", "BR"),
                     ("Vulnerable Software", "Outdated VPN appliance firmware", "")]


def escalations(n: int, orgs: list, seed: int = 0, now: datetime | None = None) -> list:
    """Escalation objects (REST spec's Escalation definition, with `due_at`)."""
    rng = random.Random(f"escalations-{seed}")
    now = now or datetime.now(timezone.utc)
    out = []
    next_id = 84000 + rng.randint(0, 100)
    for _ in range(n):
        next_id += rng.randint(1, 4)
        org = rng.choice(orgs) if orgs else {"id": 1, "name": "Org"}
        kind, subject, subtype = rng.choice(_ESCALATION_KINDS)
        severity = rng.choices(["low", "high", "critical"], [5, 3, 1])[0]
        status = rng.choices(["open", "sent", "resolved"], [4, 2, 4])[0]
        created = now - timedelta(days=rng.randint(0, 20), seconds=rng.randint(0, 86399))
        updated = min(now, created + timedelta(minutes=rng.randint(0, 900)))
        due = created + timedelta(days=rng.choice([1, 3, 7]))
        out.append({
            "id": next_id,
            "account": {"id": org.get("account_id", 5), "name": "Demo MSP"},
            "organizations": [{"id": org["id"], "name": org.get("name", "")}],
            "severity": severity,
            "status": status,
            "type": kind,
            "subtype": subtype,
            "subject": subject,
            "created_at": iso_seconds(created),
            "updated_at": iso_seconds(updated),
            "due_at": iso_seconds(due),
            "resolved_at": iso_seconds(updated) if status == "resolved" else None,
        })
    return out


# ---------------------------------------------------------------------------
# SIEM rows
# ---------------------------------------------------------------------------

_WIN_EVENTS = {
    "4624": ("logged-in", "success", "authentication", "An account was successfully logged on."),
    "4625": ("logon-failed", "failure", "authentication", "An account failed to log on."),
    "4672": ("logged-in-special", "success", "iam", "Special privileges assigned to new logon."),
    "4688": ("created-process", "success", "process", "A new process has been created."),
}
_PROCS = [("C:\\Windows\\System32\\cmd.exe", "cmd.exe /c whoami /all"),
          ("C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
           "powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\\Scripts\\inventory.ps1"),
          ("C:\\Windows\\System32\\net.exe", "net user /domain"),
          ("C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe", "chrome.exe --type=renderer")]


def _windows_row(rng, ts_iso, org_fields):
    code = rng.choices(list(_WIN_EVENTS), [6, 3, 2, 3])[0]
    action, outcome, category, headline = _WIN_EVENTS[code]
    host = _host(rng, "windows")
    user = rng.choice(_FIRST)
    domain = rng.choice(_DOMAINS)
    src = _ip(rng)
    logon_type = rng.choice([2, 3, 10])
    logon_id = f"0x{rng.getrandbits(32):x}"
    row = {
        "event.provider": "Microsoft-Windows-Security-Auditing",
        "event.code": code,
        "event.action": action,
        "event.outcome": outcome,
        "event.category": category,
        "event.kind": "event",
        "winlog.channel": "Security",
        "winlog.event_id": code,
        "winlog.record_id": str(rng.randint(100000, 99999999)),
        "winlog.computer_name": f"{host}.{domain.lower()}.local",
        "host.hostname": host,
        "host.name": host.lower(),
        "host.os.type": "windows",
        "host.os.name": rng.choice(["Windows 11 Pro", "Windows Server 2022 Standard", "Windows 10 Enterprise"]),
        "user.name": user,
        "user.domain": domain,
        "source.ip": src,
        "source.port": rng.randint(49152, 65535),
        "winlog.logon.type": {2: "Interactive", 3: "Network", 10: "RemoteInteractive"}[logon_type],
    }
    if code == "4688":
        exe, cmdline = rng.choice(_PROCS)
        row.update({"process.executable": exe, "process.command_line": cmdline,
                    "process.pid": rng.randint(400, 30000),
                    "process.parent.executable": "C:\\Windows\\explorer.exe"})
        detail = (f"Creator Subject: Security ID: S-1-5-21-{rng.randint(10**8, 10**9)}-{rng.randint(1000, 9999)} "
                  f"Account Name: {user} Account Domain: {domain} Logon ID: {logon_id} "
                  f"New Process Name: {exe} "
                  f"Creator Process Name: C:\\Windows\\explorer.exe Process Command Line: {cmdline}")
    else:
        detail = (f"Subject: Security ID: S-1-0-0 Account Name: - Account Domain: - Logon ID: 0x0 "
                  f"Logon Information: Logon Type: {logon_type} "
                  f"Elevated Token: {'Yes' if code == '4672' else 'No'} "
                  f"New Logon: Account Name: {user} Account Domain: {domain} Logon ID: {logon_id} "
                  f"Network Information: Workstation Name: {host} Source Network Address: {src} "
                  f"Source Port: {row['source.port']} "
                  f"Logon Process: {'NtLmSsp' if logon_type == 3 else 'User32'} "
                  f"Authentication Package: {'NTLM' if logon_type == 3 else 'Negotiate'}")
        if code == "4625":
            detail += " Failure Information: Failure Reason: Unknown user name or bad password. Status: 0xC000006D"
    row["message"] = f"{headline} {detail}"
    if rng.random() < 0.3:
        row["log.original"] = (
            f"<Event><System><Provider Name='Microsoft-Windows-Security-Auditing'/><EventID>{code}</EventID>"
            f"<TimeCreated SystemTime='{ts_iso}'/></System>"
            f"<EventData><Data Name='TargetUserName'>{user}</Data><Data Name='IpAddress'>{src}</Data></EventData></Event>")
    return row


_S1_THREATS = [
    ("Trojan", "Execution", "T1204.002", "User Execution: Malicious File", "invoice_2024.pdf.exe"),
    ("Ransomware", "Impact", "T1486", "Data Encrypted for Impact", "locker.dll"),
    ("PUA", "Persistence", "T1547.001", "Registry Run Keys / Startup Folder", "toolbar_helper.exe"),
    ("Infostealer", "Credential Access", "T1555.003", "Credentials from Web Browsers", "chrome_dump.exe"),
]


def _sentinelone_row(rng, ts_iso, org_fields):
    classification, tactic, tech_id, tech_name, fname = rng.choice(_S1_THREATS)
    host = _host(rng, "windows")
    sha = "".join(rng.choice("0123456789abcdef") for _ in range(64))
    mitigated = rng.random() < 0.6
    action = "Threat Mitigated" if mitigated else "Threat Detected"
    path = f"C:\\Users\\{rng.choice(_FIRST)}\\Downloads\\{fname}"
    threat_id = str(rng.randint(10**18, 10**19 - 1))
    return {
        "event.provider": "Syslog-SentinelOne",
        "event.kind": "alert",
        "event.category": ["malware", "intrusion_detection"],
        "event.action": action,
        "event.severity": rng.choice([47, 73, 99]),
        "event.outcome": "success" if mitigated else "unknown",
        "observer.vendor": "SentinelOne",
        "observer.product": "Singularity",
        "host.hostname": host,
        "host.os.type": "windows",
        "user.name": rng.choice(_FIRST),
        "file.name": fname,
        "file.path": path,
        "file.hash.sha256": sha,
        "threat.framework": "MITRE ATT&CK",
        "threat.tactic.name": tactic,
        "threat.technique.id": tech_id,
        "threat.technique.name": tech_name,
        "rule.name": f"{classification} detected by static AI",
        "sentinel_one.threat.id": threat_id,
        "sentinel_one.threat.classification": classification,
        "sentinel_one.threat.mitigation_status": "mitigated" if mitigated else "not_mitigated",
        "message": (f"CEF:0|SentinelOne|Mgmt|24.1|{threat_id}|{action}|8|rt={ts_iso} dvchost={host} "
                    f"fname={fname} filePath={path} cs1Label=Classification cs1={classification} "
                    f"cs2Label=MitigationStatus cs2={'mitigated' if mitigated else 'not_mitigated'}"),
    }


_CT_EVENTS = [
    ("signin.amazonaws.com", "ConsoleLogin", "AwsConsoleSignIn"),
    ("iam.amazonaws.com", "CreateAccessKey", "AwsApiCall"),
    ("sts.amazonaws.com", "AssumeRole", "AwsApiCall"),
    ("s3.amazonaws.com", "PutBucketPolicy", "AwsApiCall"),
]


def _generichec_row(rng, ts_iso, org_fields):
    source, name, etype = rng.choices(_CT_EVENTS, [4, 1, 3, 1])[0]
    acct = "123456789012"
    root = name == "ConsoleLogin" and rng.random() < 0.5
    user = rng.choice(_FIRST)
    identity = ({"type": "Root", "principalId": acct, "arn": f"arn:aws:iam::{acct}:root", "accountId": acct}
                if root else
                {"type": "IAMUser", "principalId": "AIDA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
                 "arn": f"arn:aws:iam::{acct}:user/{user}", "accountId": acct, "userName": user})
    record = {
        "eventVersion": "1.09",
        "userIdentity": identity,
        "eventTime": ts_iso[:19] + "Z",
        "eventSource": source,
        "eventName": name,
        "awsRegion": rng.choice(["us-east-1", "us-west-2", "eu-west-1"]),
        "sourceIPAddress": _ip(rng),
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
        "requestParameters": None if name == "ConsoleLogin" else {"roleSessionName": f"{user}-session"},
        "responseElements": {"ConsoleLogin": rng.choice(["Success", "Success", "Failure"])} if name == "ConsoleLogin" else None,
        "additionalEventData": {"LoginTo": "https://console.aws.amazon.com/console/home", "MobileVersion": "No",
                                "MFAUsed": rng.choice(["Yes", "No"])} if name == "ConsoleLogin" else None,
        "eventID": _rid(rng),
        "readOnly": False,
        "eventType": etype,
        "managementEvent": True,
        "recipientAccountId": acct,
        "eventCategory": "Management",
    }
    return {"event.provider": "GenericHEC", "message": json.dumps(record, separators=(",", ":"))}


_PROVIDERS = {"windows": _windows_row, "sentinelone": _sentinelone_row, "generichec": _generichec_row}


def siem_events(n: int, start: datetime, end: datetime, seed: int = 0,
                providers=("windows", "sentinelone", "generichec"), org_ids=None) -> list:
    """`n` SIEM rows with "@timestamp" (nanoseconds) spread over [start, end).

    Each row has a seeded uuid4, "organization_id" (or, for ~20%,
    "organization.id" instead) and provider-specific ECS fields. Rows are in
    time order; the simulator does not return them that way."""
    for p in providers:
        if p not in _PROVIDERS:
            raise ValueError(f"unknown provider {p!r}; known: {sorted(_PROVIDERS)}")
    rng = random.Random(f"siem-{seed}")
    if org_ids is None:
        org_ids = [o["id"] for o in organizations(3, seed=seed)]
    lo, hi = dt_to_ns(start), dt_to_ns(end)
    if hi <= lo:
        raise ValueError("end must be after start")
    stamps = sorted(rng.randrange(lo, hi) for _ in range(n))
    rows = []
    for ts in stamps:
        ts_iso = format_ns(ts)
        provider = rng.choice(providers)
        uid = _rid(rng)
        org = rng.choice(org_ids)
        org_fields = {"organization.id": org} if rng.random() < 0.2 else {"organization_id": org}
        row = {"uuid": uid, "@timestamp": ts_iso}
        row.update(org_fields)
        row.update(_PROVIDERS[provider](rng, ts_iso, org_fields))
        rows.append(row)
    return rows
