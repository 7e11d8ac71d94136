#!/usr/bin/env python3
"""moto's EC2/KMS/STS server, with the EBS behaviour snapferry's end-to-end tests rely on.

    python3 snapferry_moto.py --port PORT [--host 127.0.0.1] [options]

Prints ``ready http://HOST:PORT`` on stdout once it listens, then serves until killed.
See README.md in this folder for every patch, the options and the control API.

moto 5.2 answers the EBS calls of a cross-account copy as if AWS were instant, single
account and lenient. The patches below (applied by ``apply_patches``) make it behave
like AWS where snapferry's correctness depends on it: time passes (pending, progress),
sharing and key policies matter, asynchronous failures surface as ``error`` snapshots,
and CreateVolume is idempotent with a ClientToken. A WSGI layer in front of moto adds
throttling and call counting, driven by a small control API under ``/_snapferry/``.
"""

import argparse
import fnmatch
import json
import logging
import os
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from urllib.parse import parse_qs, parse_qsl

# moto gives every account and region a few hundred public AMIs, each with snapshots
# that DescribeSnapshots lists as the caller's own. The copy flow uses no AMI: without
# them a backend builds faster and snapshot listings hold only what the test made.
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

try:
    import moto
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.elastic_block_store import EBSBackend, Snapshot, Volume
    from moto.ec2.responses.elastic_block_store import ElasticBlockStore
    from moto.ec2.utils import generic_filter, random_snapshot_id
    from moto.iam.models import get_account_id_from
    from moto.kms.exceptions import AccessDeniedException, NotFoundException
    from moto.kms.models import KmsBackend, kms_backends
    from moto.kms.responses import KmsResponse
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        create_backend_app,
    )
    from werkzeug.serving import make_server
except ImportError as err:  # pragma: no cover - environment problem, not a test failure
    sys.stderr.write(
        f"snapferry_moto: cannot import moto's server ({err}).\n"
        'Install it with: python3 -m pip install "moto[server]==5.2.1"\n'
    )
    sys.exit(3)

EXPECTED_MOTO = "5.2.1"

# ---------------------------------------------------------------------------
# Run-time configuration and call counters
# ---------------------------------------------------------------------------

DEFAULT_CONFIG = {
    # Seconds a new snapshot (CreateSnapshot) stays `pending` before `completed`.
    "snapshot_pending_seconds": 0.0,
    # Seconds a copy (CopySnapshot) stays `pending` before `completed` or `error`.
    "copy_pending_seconds": 0.0,
    # Seconds a new volume stays `creating` before `available`.
    "volume_pending_seconds": 0.0,
    # Fraction (0..1) of EC2 requests answered 503 RequestLimitExceeded.
    "throttle_rate": 0.0,
    # Seed of the throttling draw, for reproducible runs (null: random).
    "throttle_seed": None,
    # Only these EC2 actions are throttled (null: all of them).
    "throttle_actions": None,
    # Copies still pending per account and destination region above which
    # CopySnapshot fails with ResourceLimitExceeded (0: no limit).
    "max_concurrent_copies": 0,
    # Seconds a day of a snapshot lock's LockDuration (and an hour of its
    # CoolOffPeriod, divided by 24) lasts: 86400 as in AWS; tests shorten it to see
    # locks expire.
    "lock_day_seconds": 86400.0,
    # Copies into another account or region of this volume's snapshots get their second
    # written block with other content (null: none), for verified copies.
    "corrupt_copies_of": None,
}

_state_lock = threading.Lock()
CONFIG = dict(DEFAULT_CONFIG)
_throttle_random = random.Random()

# "service:Action" -> count, for every request received (throttled ones included).
CALLS: Counter = Counter()
# The same, restricted to actions that change something.
MUTATING: Counter = Counter()
# Requests answered with RequestLimitExceeded.
THROTTLED: Counter = Counter()
# account id -> Counter of "service:Action".
BY_ACCOUNT: dict = {}

# Actions that read or only use existing resources; everything else counts as mutating.
_READ_PREFIXES = ("Describe", "Get", "List")
_READ_ACTIONS = {
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateRandom",
    "AssumeRole",
    "AssumeRoleWithWebIdentity",
}


def is_mutating(action: str) -> bool:
    return not (action.startswith(_READ_PREFIXES) or action in _READ_ACTIONS)


def update_config(changes: dict) -> dict:
    """Validates and applies a partial configuration; returns the whole new one."""
    unknown = set(changes) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    new = dict(CONFIG)
    for key, value in changes.items():
        if key.endswith("_seconds") or key == "throttle_rate":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a number >= 0")
            value = float(value)
        if key == "throttle_rate" and value > 1:
            raise ValueError("throttle_rate must be between 0 and 1")
        if key in ("throttle_seed", "max_concurrent_copies") and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be an integer >= 0")
        if key == "max_concurrent_copies" and value is None:
            value = 0
        if key == "corrupt_copies_of" and value is not None and not isinstance(value, str):
            raise ValueError("corrupt_copies_of must be a volume id or null")
        if key == "throttle_actions" and value is not None:
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise ValueError("throttle_actions must be a list of action names or null")
        new[key] = value
    with _state_lock:
        CONFIG.update(new)
        if "throttle_seed" in changes or "throttle_rate" in changes:
            _throttle_random.seed(CONFIG["throttle_seed"])
    return dict(CONFIG)


def reset_calls() -> None:
    with _state_lock:
        for counter in (CALLS, MUTATING, THROTTLED):
            counter.clear()
        BY_ACCOUNT.clear()


# ---------------------------------------------------------------------------
# Lookups and key policy evaluation shared by the patches
# ---------------------------------------------------------------------------

KEY_NOT_ACCESSIBLE = "Given key ID is not accessible"

# What EBS does with the source key of a cross-account copy on the caller's behalf.
# The EBS guide ("share-kms-key") lists these among what the target account needs.
COPY_SOURCE_KEY_ACTIONS = ("kms:Decrypt", "kms:ReEncryptFrom", "kms:CreateGrant")


def _ready_at(config_key: str) -> float:
    return time.time() + CONFIG[config_key]


def _find_key(account_id: str, region: str, key_id: str | None):
    """The KMS key behind an id, ARN, alias or alias ARN, or None."""
    if not key_id:
        return None
    match = re.match(r"^arn:[^:]+:kms:([^:]+):(\d{12}):", key_id)
    if match:
        region, account_id = match.group(1), match.group(2)
    backend = kms_backends[account_id][region]
    try:
        return backend.keys.get(backend.any_id_to_key_id(key_id))
    except Exception:  # unknown alias and the like
        return None


def _key_usable(key) -> bool:
    return (
        key is not None
        and key.key_state == "Enabled"
        and (key.key_usage or "ENCRYPT_DECRYPT") == "ENCRYPT_DECRYPT"  # moto stores None
        and key.key_spec == "SYMMETRIC_DEFAULT"
    )


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _principal_matches(principal, account_id: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    for value in _as_list(principal.get("AWS")):
        if value in ("*", account_id):
            return True
        # The account root, or any user or role of the account.
        if re.match(rf"^arn:[^:]+:(iam|sts)::{account_id}:", str(value)):
            return True
    return False


def _action_matches(patterns, action: str) -> bool:
    return any(
        fnmatch.fnmatchcase(action.lower(), str(p).lower()) for p in _as_list(patterns)
    )


def _conditions_hold(conditions, context: dict) -> bool:
    """Bool/String conditions against the request context; unknown ones do not hold."""
    for operator, tests in (conditions or {}).items():
        base = operator[: -len("IfExists")] if operator.endswith("IfExists") else operator
        for cond_key, expected in tests.items():
            actual = context.get(cond_key.lower())
            if actual is None:
                if operator.endswith("IfExists"):
                    continue
                return False
            expected = [str(v) for v in _as_list(expected)]
            if base == "Bool" or base == "StringEqualsIgnoreCase":
                ok = actual.lower() in (v.lower() for v in expected)
            elif base == "StringEquals":
                ok = actual in expected
            elif base == "StringLike":
                ok = any(fnmatch.fnmatchcase(actual, v) for v in expected)
            else:
                return False
            if not ok:
                return False
    return True


def key_policy_allows(key, account_id: str, action: str, region: str) -> bool:
    """Whether the key policy lets `account_id` perform `action` through EBS.

    Enough of the IAM evaluation logic for key policies: an explicit Deny wins, then
    any Allow; NotPrincipal/NotAction statements are ignored. EBS acts for the caller,
    so kms:GrantIsForAWSResource is true and kms:ViaService is EC2 in that region.
    """
    try:
        statements = _as_list(json.loads(key.policy).get("Statement"))
    except (ValueError, AttributeError):
        return False
    context = {
        "kms:grantisforawsresource": "true",
        "kms:calleraccount": account_id,
        "kms:viaservice": f"ec2.{region}.amazonaws.com",
        "aws:principalaccount": account_id,
    }
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict):
            continue
        if not _principal_matches(statement.get("Principal"), account_id):
            continue
        if not _action_matches(statement.get("Action"), action):
            continue
        if not _conditions_hold(statement.get("Condition"), context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow":
            allowed = True
    return allowed


def _find_snapshot_for(caller_account: str, region: str, snapshot_id: str):
    """A snapshot the caller owns, or one another account shared with it, or None."""
    own = ec2_backends[caller_account][region].snapshots.get(snapshot_id)
    if own is not None:
        return own
    for account_id in list(ec2_backends.keys()):
        if account_id == caller_account:
            continue
        snapshot = ec2_backends[account_id][region].snapshots.get(snapshot_id)
        if snapshot is not None and (
            caller_account in snapshot.create_volume_permission_userids
            or "all" in snapshot.create_volume_permission_groups
        ):
            return snapshot
    return None


def _snapshot_not_found(snapshot_id: str) -> EC2ClientError:
    return EC2ClientError(
        "InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist."
    )


# ---------------------------------------------------------------------------
# Patches to moto
# ---------------------------------------------------------------------------


def patch_snapshot_and_volume_states() -> None:
    """Snapshots are `pending` with a growing Progress, volumes `creating`, for a while.

    AWS: a snapshot takes minutes to hours and reports Progress "0%".."100%"; a copy
    that cannot use its keys is accepted, then ends in `error` with a StateMessage.
    moto: everything is `completed`/`available` at once. The tests need the waiting,
    the progress reports and the asynchronous failures to exercise snapferry's waits.
    Each object carries `_sf_created`, `_sf_ready_at` and `_sf_error` (set by the other
    patches); the state is computed from the clock when it is read.
    """

    def state(self) -> str:
        if time.time() < getattr(self, "_sf_ready_at", 0.0):
            return "pending"
        if getattr(self, "_sf_error", None):
            return "error"
        return self.__dict__.get("_sf_state", "completed")

    def set_state(self, value: str) -> None:  # moto's __init__ assigns "completed"
        self.__dict__["_sf_state"] = value

    def progress(self) -> str:
        ready_at = getattr(self, "_sf_ready_at", 0.0)
        now = time.time()
        if now >= ready_at:
            return "0%" if getattr(self, "_sf_error", None) else "100%"
        created = getattr(self, "_sf_created", now)
        fraction = (now - created) / max(ready_at - created, 1e-9)
        return f"{min(99, max(0, int(fraction * 100)))}%"

    def state_message(self) -> str | None:
        return self._sf_error if state(self) == "error" else None

    Snapshot.status = property(state, set_state)
    Snapshot.progress = property(progress)
    # The serializer looks for StateMessage as `state_message` or `status_message`.
    Snapshot.state_message = property(state_message)
    Snapshot.status_message = property(state_message)

    volume_status = Volume.status

    def volume_state(self) -> str:
        if time.time() < getattr(self, "_sf_ready_at", 0.0):
            return "creating"
        return volume_status.fget(self)

    Volume.status = property(volume_state)


def _mark_pending(obj, config_key: str) -> None:
    obj._sf_created = time.time()
    obj._sf_ready_at = _ready_at(config_key)


def patch_create_snapshot() -> None:
    """CreateSnapshot: the snapshot carries the volume's KMS key, and is pending a while.

    AWS: a snapshot of an encrypted volume is encrypted under the volume's key and
    reports its ARN in KmsKeyId. moto: KmsKeyId is empty. snapferry decides from
    KmsKeyId whether a snapshot must be re-encrypted before it can be shared.
    """
    original = EBSBackend.create_snapshot

    def create_snapshot(self, volume_id, description, owner_id=None, from_ami=None):
        snapshot = original(self, volume_id, description, owner_id, from_ami)
        if snapshot.volume.encrypted:
            snapshot.encrypted = True
            snapshot.kms_key_id = snapshot.volume.kms_key_id
        _mark_pending(snapshot, "snapshot_pending_seconds")
        return snapshot

    EBSBackend.create_snapshot = create_snapshot


def patch_create_volume() -> None:
    """CreateVolume: key ARNs, the snapshot's key, pending snapshots refused, `creating`.

    AWS: KmsKeyId may be an id, alias or ARN and is reported as the key ARN; a volume
    from an encrypted snapshot without KmsKeyId is under the snapshot's key; a volume
    cannot be made from a snapshot that is not completed ("IncorrectState: Snapshot is
    in invalid state - pending"). moto stores the string given, forgets the snapshot's
    key, and accepts pending snapshots.
    """
    original = EBSBackend.create_volume

    def create_volume(self, size, zone_name, snapshot_id=None, encrypted=False,
                      kms_key_id=None, **kwargs):
        if snapshot_id:
            snapshot = self.get_snapshot(snapshot_id)
            if snapshot.status != "completed":
                raise EC2ClientError(
                    "IncorrectState", f"Snapshot is in invalid state - {snapshot.status}"
                )
            if snapshot.encrypted and not kms_key_id:
                encrypted, kms_key_id = True, snapshot.kms_key_id
        key = _find_key(self.account_id, self.region_name, kms_key_id)
        if key is not None:
            kms_key_id = key.arn
        volume = original(self, size, zone_name, snapshot_id=snapshot_id,
                          encrypted=encrypted, kms_key_id=kms_key_id, **kwargs)
        _mark_pending(volume, "volume_pending_seconds")
        return volume

    EBSBackend.create_volume = create_volume


def patch_create_volume_client_token() -> None:
    """CreateVolume honours ClientToken.

    AWS: a repeated CreateVolume with the same ClientToken and parameters returns the
    first volume; with other parameters it fails with IdempotentParameterMismatch.
    moto ignores the token and makes a second volume. snapferry relies on the token so
    that a resumed run never creates a duplicate volume.
    """
    original = ElasticBlockStore.create_volume
    tokens: dict = {}  # (account, region, token) -> (parameters, volume id)
    lock = threading.Lock()

    def create_volume(self):
        token = self._get_param("ClientToken")
        if not token:
            return original(self)
        backend = self.ec2_backend
        params = sorted(
            (k, v) for k, v in self.querystring.items()
            if k not in ("ClientToken", "Action", "Version")
        )
        slot = (backend.account_id, backend.region_name, token)
        with lock:
            if slot in tokens:
                first_params, volume_id = tokens[slot]
                volume = backend.volumes.get(volume_id)
                if volume is not None:  # still there (not deleted, no moto reset)
                    if first_params != params:
                        raise EC2ClientError(
                            "IdempotentParameterMismatch",
                            "The client token you have provided is associated with a "
                            "resource that is already created with different parameters.",
                        )
                    self.error_on_dryrun()
                    return ActionResult(volume)
            result = original(self)
            tokens[slot] = (params, result.result.id)
            return result

    ElasticBlockStore.create_volume = create_volume


def patch_copy_snapshot() -> None:
    """CopySnapshot across accounts, with AWS's checks on sharing and keys.

    AWS: the source may belong to another account if it is shared with the caller
    (createVolumePermission), else InvalidSnapshot.NotFound. EBS then uses the source
    key on the caller's behalf: if its key policy does not allow the caller's account,
    or the destination KmsKeyId does not exist in the caller's account and region, the
    call still returns a snapshot id, and the copy ends in `error` with StateMessage
    "Given key ID is not accessible". The copy is under the given key (reported as
    its ARN), or the destination's default EBS key; tags come from TagSpecifications
    only. A source that is not completed cannot be copied. Above the concurrent copy
    quota of a destination region, CopySnapshot fails with ResourceLimitExceeded.
    moto: only the caller's own snapshots, keys never checked, Encrypted ignored.
    """
    def backend_copy_snapshot(self, source_snapshot_id, source_region, description,
                              kms_key_id, encrypted=False):
        source = _find_snapshot_for(self.account_id, source_region, source_snapshot_id)
        if source is None:
            raise _snapshot_not_found(source_snapshot_id)
        if source.status != "completed":
            raise EC2ClientError(
                "IncorrectState", f"Snapshot is in invalid state - {source.status}"
            )
        limit = CONFIG["max_concurrent_copies"]
        if limit:
            in_flight = sum(
                1 for s in self.snapshots.values()
                if getattr(s, "_sf_is_copy", False) and s.status == "pending"
            )
            if in_flight >= limit:
                raise EC2ClientError(
                    "ResourceLimitExceeded",
                    f"You have reached the limit of {limit} concurrent snapshot copies "
                    "to this region.",
                )

        error = None
        if source.encrypted and source.owner_id != self.account_id:
            source_key = _find_key(source.owner_id, source_region, source.kms_key_id)
            if not _key_usable(source_key) or not all(
                key_policy_allows(source_key, self.account_id, action, self.region_name)
                for action in COPY_SOURCE_KEY_ACTIONS
            ):
                error = KEY_NOT_ACCESSIBLE

        target_key_arn = None
        if kms_key_id:
            target_key = _find_key(self.account_id, self.region_name, kms_key_id)
            # Only a key of the caller's account in the destination region will do.
            if (
                target_key is not None
                and target_key.account_id == self.account_id
                and target_key.region == self.region_name
                and _key_usable(target_key)
            ):
                target_key_arn = target_key.arn
            else:
                target_key_arn = kms_key_id
                error = error or KEY_NOT_ACCESSIBLE
        elif source.encrypted or encrypted:
            same_place = source.owner_id == self.account_id and source_region == self.region_name
            target_key_arn = (
                source.kms_key_id if same_place
                else (self.default_kms_key_id or self._create_default_encryption_key())
            )

        snapshot = Snapshot(
            self,
            random_snapshot_id(),
            volume=source.volume,
            description=description,
            encrypted=bool(target_key_arn),
            kms_key_id=target_key_arn,
        )
        snapshot._sf_is_copy = True
        snapshot._sf_error = error
        # The blocks are the source's (by its volume); a corrupted copy differs in one.
        snapshot._sf_corrupt = getattr(source, "_sf_corrupt", False) or (
            CONFIG["corrupt_copies_of"] is not None
            and source.volume is not None
            and source.volume.id == CONFIG["corrupt_copies_of"]
            and (source.owner_id != self.account_id or source_region != self.region_name)
        )
        _mark_pending(snapshot, "copy_pending_seconds")
        self.snapshots[snapshot.id] = snapshot
        return snapshot

    def copy_snapshot(self):
        # moto's handler without dropping Encrypted on the floor.
        tags = self._parse_tag_specification().get("snapshot", {})
        self.error_on_dryrun()
        snapshot = self.ec2_backend.copy_snapshot(
            source_snapshot_id=self._get_param("SourceSnapshotId"),
            source_region=self._get_param("SourceRegion"),
            description=self._get_param("Description"),
            kms_key_id=self._get_param("KmsKeyId"),
            encrypted=self._get_bool_param("Encrypted", False),
        )
        snapshot.add_tags(tags)
        return ActionResult({"SnapshotId": snapshot.id, "Tags": snapshot.tag_set})

    EBSBackend.copy_snapshot = backend_copy_snapshot
    ElasticBlockStore.copy_snapshot = copy_snapshot


def patch_describe_snapshots() -> None:
    """DescribeSnapshots by id also finds snapshots shared with the caller.

    AWS: SnapshotIds may name snapshots of other accounts that the caller can restore.
    moto: InvalidSnapshot.NotFound. Lets the target side see the shared snapshot.
    """
    original = EBSBackend.describe_snapshots

    def describe_snapshots(self, snapshot_ids=None, filters=None):
        if not snapshot_ids:
            return original(self, snapshot_ids, filters)
        matches = []
        for snapshot_id in snapshot_ids:
            snapshot = _find_snapshot_for(self.account_id, self.region_name, snapshot_id)
            if snapshot is None:
                raise _snapshot_not_found(snapshot_id)
            matches.append(snapshot)
        if filters:
            matches = generic_filter(filters, matches)
        return matches

    EBSBackend.describe_snapshots = describe_snapshots


def patch_share_refuses_aws_managed_key() -> None:
    """Sharing a snapshot under the AWS managed key `aws/ebs` fails.

    AWS: ModifySnapshotAttribute add createVolumePermission on such a snapshot answers
    "OperationNotPermitted: Encrypted snapshots with EBS default key cannot be shared"
    (seen in hashicorp/packer#7499). moto shares it. snapferry must re-encrypt under a
    customer managed key first.
    """
    original = EBSBackend.add_create_volume_permission

    def add_create_volume_permission(self, snapshot_id, user_ids, groups):
        snapshot = self.get_snapshot(snapshot_id)
        if snapshot.encrypted:
            key = _find_key(self.account_id, self.region_name, snapshot.kms_key_id)
            if key is None or key.key_manager == "AWS":
                raise EC2ClientError(
                    "OperationNotPermitted",
                    "Encrypted snapshots with EBS default key cannot be shared",
                )
        return original(self, snapshot_id, user_ids, groups)

    EBSBackend.add_create_volume_permission = add_create_volume_permission


def patch_aws_managed_keys() -> None:
    """Keys behind `alias/aws/...` (such as `alias/aws/ebs`) report KeyManager AWS.

    AWS: those keys are AWS managed; their KeyManager is "AWS". moto reports
    "CUSTOMER". snapferry refuses AWS managed keys in a plan and re-encrypts snapshots
    under them, deciding from KeyManager.
    """
    original = KmsBackend.create_alias

    def create_alias(self, target_key_id, alias_name):
        alias = original(self, target_key_id, alias_name)
        if alias_name.startswith("alias/aws/"):
            self.keys[self.get_key_id(target_key_id)].key_manager = "AWS"
        return alias

    KmsBackend.create_alias = create_alias


def patch_cross_account_describe_key() -> None:
    """DescribeKey by the ARN of another account's key, if its key policy allows.

    AWS: a key ARN of another account works when the key policy allows the caller's
    account kms:DescribeKey; otherwise AccessDeniedException. moto only looks in the
    caller's account. Lets snapferry check from the target side that the source key
    is usable before copying.
    """
    original = KmsResponse.describe_key

    def describe_key(self):
        key_id = self._get_param("KeyId") or ""
        match = re.match(r"^arn:[^:]+:kms:([^:]+):(\d{12}):key/", key_id)
        if not match or match.group(2) == self.current_account:
            return original(self)
        key = _find_key(match.group(2), match.group(1), key_id)
        if key is None:
            raise NotFoundException(f"Key '{key_id}' does not exist")
        if not key_policy_allows(key, self.current_account, "kms:DescribeKey", self.region):
            raise AccessDeniedException(
                f"User: arn:aws:iam::{self.current_account}:root is not authorized to "
                f"perform: kms:DescribeKey on resource: {key.arn} because no "
                "resource-based policy allows the kms:DescribeKey action"
            )
        return json.dumps(key.to_dict())

    KmsResponse.describe_key = describe_key


def patch_key_policy_deny_by_principal() -> None:
    """An explicit Deny in a key policy denies only the principals it names.

    AWS: a Deny statement applies to the principals in its `Principal` (and only when
    its conditions hold); everyone else is judged by the rest of the policy. moto's own
    check (DescribeKey) lets any Deny with a matching action deny every caller, the
    key's own account included, so a Deny for another account would lock the owner out
    of its key. Here a Deny applies when its principal matches the caller's account.
    """

    def _validate_key_policy(self, key_id, action):
        key = self.kms_backend.describe_key(self.kms_backend.get_key_id(key_id))
        try:
            statements = _as_list(json.loads(key.policy).get("Statement"))
        except (ValueError, AttributeError):
            return
        account = self.current_account
        context = {"kms:calleraccount": account, "aws:principalaccount": account}
        for statement in statements:
            if (
                isinstance(statement, dict)
                and statement.get("Effect") == "Deny"
                and _principal_matches(statement.get("Principal"), account)
                and _action_matches(statement.get("Action"), action)
                and _conditions_hold(statement.get("Condition"), context)
            ):
                raise AccessDeniedException(
                    f"User: arn:aws:iam::{account}:root is not authorized to perform: "
                    f"{action} on resource: {key.arn} with an explicit deny in a "
                    "resource-based policy"
                )

    KmsResponse._validate_key_policy = _validate_key_policy


def _lock_view(snapshot):
    """A snapshot's lock as DescribeLockedSnapshots shows it now, or None.

    AWS: the duration starts when the snapshot completes (or when it is locked, if
    later); a compliance lock's cool-off starts when it is locked; a copy that fails
    loses its lock.
    """
    lock = getattr(snapshot, "_sf_lock", None)
    if lock is None:
        return None
    ready_at = getattr(snapshot, "_sf_ready_at", 0.0)
    now = time.time()
    if now >= ready_at and getattr(snapshot, "_sf_error", None):
        return None
    day = float(CONFIG["lock_day_seconds"])
    start = max(ready_at, lock["created"]) if now >= ready_at else None
    expires = start + lock["duration"] * day if start is not None else None
    cool_off_ends = lock["created"] + (lock["cool_off"] or 0) * day / 24.0
    if expires is not None and now >= expires:
        state = "expired"
    elif lock["mode"] == "governance":
        state = "governance"
    elif lock["cool_off"] and now < cool_off_ends:
        state = "compliance-cooloff"
    else:
        state = "compliance"
    from datetime import datetime, timezone

    def at(t):
        return datetime.fromtimestamp(t, tz=timezone.utc) if t is not None else None

    view = {
        "OwnerId": snapshot.owner_id,
        "SnapshotId": snapshot.id,
        "LockState": state,
        "LockDuration": lock["duration"],
        "LockCreatedOn": at(lock["created"]),
    }
    if lock["cool_off"]:
        view["CoolOffPeriod"] = lock["cool_off"]
        view["CoolOffPeriodExpiresOn"] = at(cool_off_ends)
    if start is not None:
        view["LockDurationStartTime"] = at(start)
        view["LockExpiresOn"] = at(expires)
    return view


def patch_snapshot_lock() -> None:
    """LockSnapshot, UnlockSnapshot, DescribeLockedSnapshots; a locked snapshot
    cannot be deleted.

    AWS: LockSnapshot(SnapshotId, LockMode governance|compliance, LockDuration days,
    CoolOffPeriod hours for compliance) on a snapshot the caller owns, pending or
    completed; locking it the same way again changes nothing; a compliance lock past
    its cool-off can only be extended. UnlockSnapshot works on governance locks and on
    compliance locks in their cool-off. DeleteSnapshot of a locked snapshot fails.
    moto 5.2: none of the three calls; deletes anything.
    """

    def own_snapshot(response, snapshot_id):
        snapshot = response.ec2_backend.snapshots.get(snapshot_id)
        if snapshot is None:
            raise _snapshot_not_found(snapshot_id)
        return snapshot

    def lock_snapshot(self):
        snapshot_id = self._get_param("SnapshotId")
        self.error_on_dryrun()
        snapshot = own_snapshot(self, snapshot_id)
        mode = self._get_param("LockMode")
        duration = self._get_int_param("LockDuration")
        cool_off = self._get_int_param("CoolOffPeriod")
        if mode not in ("governance", "compliance"):
            raise EC2ClientError("InvalidParameterValue", f"Invalid lock mode: {mode}")
        if duration is None or not 1 <= duration <= 36500:
            raise EC2ClientError("InvalidParameterValue", "LockDuration must be 1 to 36500 days")
        if cool_off is not None and (mode != "compliance" or not 1 <= cool_off <= 72):
            raise EC2ClientError("InvalidParameterValue", "CoolOffPeriod is 1 to 72 hours, compliance only")
        if snapshot.status == "error":
            raise EC2ClientError("IncorrectState", f"Snapshot '{snapshot_id}' is in state error.")
        current = _lock_view(snapshot)
        old = getattr(snapshot, "_sf_lock", None)
        new = {"mode": mode, "duration": duration, "cool_off": cool_off, "created": time.time()}
        same = old is not None and (old["mode"], old["duration"], old["cool_off"]) == (mode, duration, cool_off)
        if current is not None and current["LockState"] != "expired" and same:
            pass  # the same lock again: nothing changes
        elif current is not None and current["LockState"] == "compliance":
            if mode != "compliance" or duration < old["duration"]:
                raise EC2ClientError(
                    "InvalidParameterValue",
                    f"Snapshot '{snapshot_id}' is locked in compliance mode: its lock can only be extended.",
                )
            snapshot._sf_lock = dict(old, duration=duration)
        else:
            snapshot._sf_lock = new
        view = _lock_view(snapshot)
        view.pop("OwnerId", None)
        return ActionResult(view)

    def unlock_snapshot(self):
        snapshot_id = self._get_param("SnapshotId")
        self.error_on_dryrun()
        snapshot = own_snapshot(self, snapshot_id)
        view = _lock_view(snapshot)
        if view is not None and view["LockState"] == "compliance":
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Snapshot '{snapshot_id}' is locked in compliance mode past its cool-off and cannot be unlocked.",
            )
        snapshot._sf_lock = None
        return ActionResult({"SnapshotId": snapshot_id})

    def describe_locked_snapshots(self):
        snapshot_ids = self._get_param("SnapshotIds", [])
        self.error_on_dryrun()
        snapshots = self.ec2_backend.snapshots
        chosen = [snapshots[i] for i in snapshot_ids if i in snapshots] if snapshot_ids else list(snapshots.values())
        views = [v for v in (_lock_view(s) for s in chosen) if v is not None]
        return ActionResult({"Snapshots": views})

    original_delete = EBSBackend.delete_snapshot

    def delete_snapshot(self, snapshot_id):
        snapshot = self.snapshots.get(snapshot_id)
        view = _lock_view(snapshot) if snapshot is not None else None
        if view is not None and view["LockState"] != "expired":
            raise EC2ClientError(
                "SnapshotLocked",
                f"The snapshot '{snapshot_id}' is locked and cannot be deleted until its lock expires.",
            )
        return original_delete(self, snapshot_id)

    ElasticBlockStore.lock_snapshot = lock_snapshot
    ElasticBlockStore.unlock_snapshot = unlock_snapshot
    ElasticBlockStore.describe_locked_snapshots = describe_locked_snapshots
    EBSBackend.delete_snapshot = delete_snapshot


def apply_patches() -> None:
    if moto.__version__ != EXPECTED_MOTO:
        sys.stderr.write(
            f"snapferry_moto: written for moto {EXPECTED_MOTO}, found {moto.__version__}\n"
        )
    patch_snapshot_and_volume_states()
    patch_create_snapshot()
    patch_create_volume()
    patch_create_volume_client_token()
    patch_copy_snapshot()
    patch_describe_snapshots()
    patch_share_refuses_aws_managed_key()
    patch_aws_managed_keys()
    patch_cross_account_describe_key()
    patch_key_policy_deny_by_principal()
    patch_snapshot_lock()
    patch_ebs_direct_reads()


# ---------------------------------------------------------------------------
# EBS direct APIs on EC2 snapshots
# ---------------------------------------------------------------------------

BLOCK_SIZE = 524288
# Written blocks per volume: enough to page (a page holds at least 100) and to sample.
WRITTEN_BLOCKS = 150


def _written_blocks(volume_id: str, size_gib: int) -> list:
    """The written block indexes of a volume: deterministic from its id."""
    import hashlib
    total = max(1, size_gib) * 2048
    out = set()
    i = 0
    while len(out) < min(WRITTEN_BLOCKS, total):
        h = hashlib.sha256(f"{volume_id}/{i}".encode()).digest()
        out.add(int.from_bytes(h[:8], "big") % total)
        i += 1
    return sorted(out)


def _block_data(volume_id: str, index: int, generation: int) -> bytes:
    """512 KiB of data for one block: a digest of (volume, index, generation) repeated."""
    import hashlib
    seed = hashlib.sha256(f"{volume_id}/{index}/{generation}".encode()).digest()
    return seed * (BLOCK_SIZE // len(seed))


def _snapshot_blocks(snapshot):
    """(index -> generation) of an EC2 snapshot's blocks: its volume's, cloned by copies;
    a corrupted copy has its second block changed."""
    volume = snapshot.volume
    if volume is None:
        return {}
    blocks = {i: 1 for i in _written_blocks(volume.id, int(volume.size))}
    if getattr(snapshot, "_sf_corrupt", False) and len(blocks) > 1:
        blocks[sorted(blocks)[1]] = 2
    return blocks


def _ebs_error(status: int, kind: str, message: str, reason: str):
    body = json.dumps({"Message": message, "Reason": reason})
    # moto takes the status from the headers too.
    return status, {"status": status, "x-amzn-ErrorType": kind, "Content-Type": "application/json"}, body


def patch_ebs_direct_reads() -> None:
    """ListSnapshotBlocks and GetSnapshotBlock for EC2 snapshots (CreateSnapshot,
    CopySnapshot).

    AWS: a completed snapshot of the caller's own lists its written blocks in index
    order (BlockIndex an integer, a BlockToken each), paged by MaxResults (100 to 10,000)
    and NextToken, from StartingBlockIndex; GetSnapshotBlock returns the block's data
    with `x-amz-Checksum`, the Base64 SHA-256 of that data. A copy holds its source's
    data under another key. moto: only StartSnapshot snapshots (EC2 ones answer 500),
    BlockIndex as a string, no paging, the client's checksum echoed.
    """
    import base64
    import hashlib
    from moto.ebs.responses import EBSResponse

    def _own_completed(self, snapshot_id):
        snapshot = ec2_backends[self.current_account][self.region].snapshots.get(snapshot_id)
        if snapshot is None:
            return None, _ebs_error(404, "ResourceNotFoundException",
                                    f"The snapshot '{snapshot_id}' does not exist.", "SNAPSHOT_NOT_FOUND")
        if snapshot.status != "completed":
            return None, _ebs_error(400, "ValidationException",
                                    f"The snapshot '{snapshot_id}' is not completed.", "INVALID_SNAPSHOT_STATE")
        return snapshot, None

    def list_snapshot_blocks(self):
        snapshot_id = self.path.split("?")[0].split("/")[-2]
        snapshot, error = _own_completed(self, snapshot_id)
        if error:
            return error
        q = self.querystring
        first = lambda name: (q.get(name) or [None])[0]
        limit = max(100, min(10000, int(first("maxResults") or 10000)))
        start = int(first("pageToken") or first("startingBlockIndex") or 0)
        indexes = [i for i in sorted(_snapshot_blocks(snapshot)) if i >= start]
        page, rest = indexes[:limit], indexes[limit:]
        body = {
            "Blocks": [{"BlockIndex": i, "BlockToken": f"{snapshot_id}:{i}"} for i in page],
            "VolumeSize": int(snapshot.volume.size) if snapshot.volume else 0,
            "BlockSize": BLOCK_SIZE,
        }
        if rest:
            body["NextToken"] = str(rest[0])
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    def get_snapshot_block(self):
        parts = self.path.split("?")[0].split("/")
        snapshot_id, index = parts[-3], int(parts[-1])
        snapshot, error = _own_completed(self, snapshot_id)
        if error:
            return error
        token = (self.querystring.get("blockToken") or [""])[0]
        blocks = _snapshot_blocks(snapshot)
        if index not in blocks or token != f"{snapshot_id}:{index}":
            return _ebs_error(400, "ValidationException", "The block token is not valid.", "INVALID_BLOCK_TOKEN")
        data = _block_data(snapshot.volume.id, index, blocks[index])
        headers = {
            "x-amz-Checksum": base64.b64encode(hashlib.sha256(data).digest()).decode(),
            "x-amz-Checksum-Algorithm": "SHA256",
            "x-amz-Data-Length": str(len(data)),
            "Content-Type": "application/octet-stream",
        }
        return 200, headers, data

    EBSResponse.list_snapshot_blocks = list_snapshot_blocks
    EBSResponse.get_snapshot_block = get_snapshot_block


# ---------------------------------------------------------------------------
# WSGI layer: control API, throttling, call counting
# ---------------------------------------------------------------------------

_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/")

THROTTLE_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
    "<Message>Request limit exceeded.</Message></Error></Errors>"
    "<RequestID>{request_id}</RequestID></Response>"
)


def _read_body(environ) -> bytes:
    """Reads the request body and puts it back for moto."""
    import io

    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _identify(environ) -> tuple[str, str, str]:
    """(service, action, access key) of an AWS request, as far as they can be told."""
    scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    access_key, service = (scope.group(1), scope.group(3)) if scope else ("", "unknown")
    if service == "ebs":
        # The EBS direct APIs are REST: the action is in the method and path.
        path = environ.get("PATH_INFO", "")
        if re.search(r"/snapshots/[^/]+/blocks$", path):
            return service, "ListSnapshotBlocks", access_key
        if re.search(r"/snapshots/[^/]+/blocks/[^/]+$", path):
            return service, "GetSnapshotBlock", access_key
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return service, target.rsplit(".", 1)[-1], access_key
    action = parse_qs(environ.get("QUERY_STRING", "")).get("Action", [""])[0]
    content_type = environ.get("CONTENT_TYPE", "")
    if not action and content_type.startswith("application/x-www-form-urlencoded"):
        form = dict(parse_qsl(_read_body(environ).decode("utf-8", "replace")))
        action = form.get("Action", "")
    return service, action or "unknown", access_key


def _respond(start_response, status: str, body: bytes, content_type: str):
    start_response(
        status, [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    )
    return [body]


def _json(start_response, value, status: str = "200 OK"):
    return _respond(start_response, status, json.dumps(value).encode(), "application/json")


class SnapferryApp:
    """Answers /_snapferry/*, throttles and counts the rest, then hands it to moto."""

    def __init__(self, moto_app):
        self.moto_app = moto_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_snapferry/"):
            return self.control(environ, start_response, path[len("/_snapferry/"):])

        service, action, access_key = _identify(environ)
        name = f"{service}:{action}"
        account = get_account_id_from(access_key) if access_key else "unknown"
        with _state_lock:
            CALLS[name] += 1
            BY_ACCOUNT.setdefault(account, Counter())[name] += 1
            if is_mutating(action):
                MUTATING[name] += 1
            throttle = (
                service == "ec2"
                and CONFIG["throttle_rate"] > 0
                and (CONFIG["throttle_actions"] is None or action in CONFIG["throttle_actions"])
                and _throttle_random.random() < CONFIG["throttle_rate"]
            )
            if throttle:
                THROTTLED[name] += 1
        if throttle:
            body = THROTTLE_BODY.format(request_id=uuid.uuid4()).encode()
            return _respond(start_response, "503 Service Unavailable", body, "text/xml")
        return self.moto_app(environ, start_response)

    def control(self, environ, start_response, route: str):
        method = environ.get("REQUEST_METHOD", "GET")
        if route == "config" and method == "GET":
            with _state_lock:
                return _json(start_response, dict(CONFIG))
        if route == "config" and method == "POST":
            try:
                changes = json.loads(_read_body(environ) or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                return _json(start_response, update_config(changes))
            except ValueError as err:
                return _json(start_response, {"error": str(err)}, "400 Bad Request")
        if route == "calls" and method == "GET":
            view = parse_qs(environ.get("QUERY_STRING", "")).get("view", ["all"])[0]
            with _state_lock:
                views = {
                    "all": lambda: dict(CALLS),
                    "mutating": lambda: dict(MUTATING),
                    "throttled": lambda: dict(THROTTLED),
                    "by-account": lambda: {a: dict(c) for a, c in BY_ACCOUNT.items()},
                }
                if view not in views:
                    return _json(
                        start_response,
                        {"error": f"unknown view {view!r}; one of {sorted(views)}"},
                        "400 Bad Request",
                    )
                return _json(start_response, views[view]())
        if route == "reset-calls" and method == "POST":
            reset_calls()
            return _json(start_response, {})
        return _json(start_response, {"error": f"no such route: {method} /_snapferry/{route}"},
                     "404 Not Found")


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback)")
    for key in ("snapshot_pending_seconds", "copy_pending_seconds", "volume_pending_seconds"):
        parser.add_argument("--" + key.replace("_", "-"), type=float, default=0.0)
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--throttle-seed", type=int, default=None)
    parser.add_argument("--throttle-actions", default=None,
                        help="comma-separated EC2 actions to throttle (default: all)")
    parser.add_argument("--max-concurrent-copies", type=int, default=0)
    parser.add_argument("--lock-day-seconds", type=float, default=86400.0,
                        help="seconds a day of a snapshot lock lasts (default: a day)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    try:
        update_config({
            "snapshot_pending_seconds": args.snapshot_pending_seconds,
            "copy_pending_seconds": args.copy_pending_seconds,
            "volume_pending_seconds": args.volume_pending_seconds,
            "throttle_rate": args.throttle_rate,
            "throttle_seed": args.throttle_seed,
            "throttle_actions": args.throttle_actions.split(",") if args.throttle_actions else None,
            "max_concurrent_copies": args.max_concurrent_copies,
            "lock_day_seconds": args.lock_day_seconds,
        })
    except ValueError as err:
        sys.exit(f"snapferry_moto: {err}")
    apply_patches()
    if not args.verbose:
        # One line per request on stderr drowns the test output.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    app = SnapferryApp(DomainDispatcherApplication(create_backend_app))
    server = make_server(args.host, args.port, app, threaded=True)
    host, port = server.server_address[:2]
    print(f"ready http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
