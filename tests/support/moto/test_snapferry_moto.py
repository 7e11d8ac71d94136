"""Tests of snapferry_moto.py: a cross-account copy flow against the patched server.

Run from the crate root with
    python3 -m unittest discover -s tests/support/moto -p 'test_*.py' -v
or `python3 test_snapferry_moto.py` from this folder. Needs moto[server] (and its boto3).
"""

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCHER = os.path.join(HERE, "snapferry_moto.py")

SOURCE_ACCOUNT = "123456789012"  # moto's default account
TARGET_ACCOUNT = "222222222222"
SOURCE_REGION = "us-east-1"
TARGET_REGION = "eu-west-1"

# No retries: the tests look at every answer, throttled ones included.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grant_statements(account: str) -> list:
    """The statements the EBS guide asks for on the source key, for `account`."""
    return [
        {
            "Sid": "snapferry-use",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                       "kms:GenerateDataKey*", "kms:DescribeKey"],
            "Resource": "*",
        },
        {
            "Sid": "snapferry-grants",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
            "Resource": "*",
            "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
        },
    ]


class SnapferryMotoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        cls.endpoint = f"http://127.0.0.1:{cls.port}"
        cls.proc = subprocess.Popen(
            [sys.executable, LAUNCHER, "--port", str(cls.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = cls.proc.stdout.readline().strip()
        if line != f"ready {cls.endpoint}":
            cls.proc.kill()
            raise RuntimeError(f"launcher did not start: {line!r}")

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=10)
        cls.proc.stdout.close()

    def setUp(self):
        self.configure(
            snapshot_pending_seconds=0, copy_pending_seconds=0, volume_pending_seconds=0,
            throttle_rate=0, throttle_actions=None, max_concurrent_copies=0,
            lock_day_seconds=86400, corrupt_copies_of=None,
        )
        self.control("POST", "reset-calls")

    # -- control API ------------------------------------------------------

    def control(self, method: str, route: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.endpoint}/_snapferry/{route}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def configure(self, **options):
        return self.control("POST", "config", options)

    # -- clients ----------------------------------------------------------

    def client(self, service: str, region: str, credentials=None):
        credentials = credentials or {
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "aws_session_token": "testing",
        }
        return boto3.client(service, region_name=region, endpoint_url=self.endpoint,
                            config=NO_RETRY, **credentials)

    def target_credentials(self) -> dict:
        sts = self.client("sts", SOURCE_REGION)
        creds = sts.assume_role(
            RoleArn=f"arn:aws:iam::{TARGET_ACCOUNT}:role/x", RoleSessionName="copy"
        )["Credentials"]
        return {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }

    def wait_snapshot(self, ec2, snapshot_id, timeout=20) -> dict:
        deadline = time.time() + timeout
        while True:
            snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
            if snap["State"] != "pending" or time.time() > deadline:
                return snap
            time.sleep(0.2)

    def source_setup(self, grant: bool = True, **volume_args):
        """A CMK, a volume under it and a completed, shared snapshot of it."""
        ec2 = self.client("ec2", SOURCE_REGION)
        kms = self.client("kms", SOURCE_REGION)
        key = kms.create_key(Description="source")["KeyMetadata"]
        if grant:
            policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
            policy["Statement"].extend(grant_statements(TARGET_ACCOUNT))
            kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps(policy))
        args = {"Encrypted": True, "KmsKeyId": key["KeyId"], **volume_args}
        volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, **args)
        snap = ec2.create_snapshot(VolumeId=volume["VolumeId"])
        snap = self.wait_snapshot(ec2, snap["SnapshotId"])
        return ec2, key, volume, snap

    def share(self, ec2, snapshot_id):
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission",
            OperationType="add", UserIds=[TARGET_ACCOUNT],
        )

    def target_key(self, target):
        kms = self.client("kms", TARGET_REGION, target)
        return kms.create_key(Description="target")["KeyMetadata"]

    # -- the flow ---------------------------------------------------------

    def test_cross_account_copy_flow(self):
        self.configure(snapshot_pending_seconds=1, copy_pending_seconds=1.5,
                       volume_pending_seconds=0.5)
        ec2 = self.client("ec2", SOURCE_REGION)
        kms = self.client("kms", SOURCE_REGION)
        key = kms.create_key(Description="source")["KeyMetadata"]
        volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8,
                                   Encrypted=True, KmsKeyId=key["KeyId"])
        self.assertEqual(volume["KmsKeyId"], key["Arn"])

        snap = ec2.create_snapshot(VolumeId=volume["VolumeId"])
        self.assertEqual(snap["State"], "pending")
        self.assertTrue(snap["Encrypted"])
        self.assertEqual(snap["KmsKeyId"], key["Arn"])  # inherited from the volume
        described = ec2.describe_snapshots(SnapshotIds=[snap["SnapshotId"]])["Snapshots"][0]
        self.assertEqual(described["State"], "pending")
        self.assertRegex(described["Progress"], r"^\d{1,2}%$")
        described = self.wait_snapshot(ec2, snap["SnapshotId"])
        self.assertEqual((described["State"], described["Progress"]), ("completed", "100%"))

        policy = json.loads(kms.get_key_policy(KeyId=key["Arn"], PolicyName="default")["Policy"])
        policy["Statement"].extend(grant_statements(TARGET_ACCOUNT))
        kms.put_key_policy(KeyId=key["Arn"], PolicyName="default", Policy=json.dumps(policy))
        self.share(ec2, snap["SnapshotId"])
        attribute = ec2.describe_snapshot_attribute(
            SnapshotId=snap["SnapshotId"], Attribute="createVolumePermission")
        self.assertEqual(attribute["CreateVolumePermissions"], [{"UserId": TARGET_ACCOUNT}])

        target = self.target_credentials()
        self.assertEqual(
            self.client("sts", TARGET_REGION, target).get_caller_identity()["Account"],
            TARGET_ACCOUNT,
        )
        # The target can read the source key and see the shared snapshot.
        source_key = self.client("kms", SOURCE_REGION, target).describe_key(KeyId=key["Arn"])
        self.assertEqual(source_key["KeyMetadata"]["KeyManager"], "CUSTOMER")
        shared = self.client("ec2", SOURCE_REGION, target).describe_snapshots(
            SnapshotIds=[snap["SnapshotId"]])["Snapshots"]
        self.assertEqual(shared[0]["OwnerId"], SOURCE_ACCOUNT)

        tkey = self.target_key(target)
        tec2 = self.client("ec2", TARGET_REGION, target)
        copy = tec2.copy_snapshot(
            SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
            Encrypted=True, KmsKeyId=tkey["Arn"],
            TagSpecifications=[{"ResourceType": "snapshot",
                                "Tags": [{"Key": "snapferry:step", "Value": "copy"}]}],
        )
        copied = tec2.describe_snapshots(SnapshotIds=[copy["SnapshotId"]])["Snapshots"][0]
        self.assertEqual(copied["State"], "pending")
        self.assertEqual(copied["OwnerId"], TARGET_ACCOUNT)
        self.assertEqual(copied["KmsKeyId"], tkey["Arn"])
        self.assertTrue(copied["Encrypted"])
        self.assertEqual(copied["Tags"], [{"Key": "snapferry:step", "Value": "copy"}])
        # Not completed yet: no volume from it.
        with self.assertRaises(ClientError) as err:
            tec2.create_volume(AvailabilityZone="eu-west-1a", SnapshotId=copy["SnapshotId"])
        self.assertEqual(err.exception.response["Error"]["Code"], "IncorrectState")

        copied = self.wait_snapshot(tec2, copy["SnapshotId"])
        self.assertEqual(copied["State"], "completed")
        self.assertNotIn("StateMessage", copied)

        args = dict(AvailabilityZone="eu-west-1a", SnapshotId=copy["SnapshotId"],
                    VolumeType="gp3", ClientToken="run-1/vol-a")
        first = tec2.create_volume(**args)
        second = tec2.create_volume(**args)
        self.assertEqual(first["VolumeId"], second["VolumeId"])
        self.assertEqual(first["State"], "creating")
        self.assertEqual(first["KmsKeyId"], tkey["Arn"])  # the snapshot's key
        volumes = tec2.describe_volumes(
            Filters=[{"Name": "snapshot-id", "Values": [copy["SnapshotId"]]}])["Volumes"]
        self.assertEqual(len(volumes), 1)
        time.sleep(0.6)
        self.assertEqual(
            tec2.describe_volumes(VolumeIds=[first["VolumeId"]])["Volumes"][0]["State"],
            "available",
        )
        with self.assertRaises(ClientError) as err:
            tec2.create_volume(**{**args, "VolumeType": "gp2"})
        self.assertEqual(err.exception.response["Error"]["Code"], "IdempotentParameterMismatch")

        # Cleanup on the source side still works with volumes made from the copy.
        ec2.modify_snapshot_attribute(
            SnapshotId=snap["SnapshotId"], Attribute="createVolumePermission",
            OperationType="remove", UserIds=[TARGET_ACCOUNT])
        ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])

        calls = self.control("GET", "calls")
        self.assertEqual(calls["ec2:CreateSnapshot"], 1)
        self.assertEqual(calls["ec2:CopySnapshot"], 1)
        self.assertEqual(calls["ec2:CreateVolume"], 5)
        self.assertEqual(calls["kms:PutKeyPolicy"], 1)
        self.assertEqual(calls["sts:AssumeRole"], 1)
        mutating = self.control("GET", "calls?view=mutating")
        self.assertIn("ec2:CopySnapshot", mutating)
        self.assertNotIn("ec2:DescribeSnapshots", mutating)
        self.assertNotIn("kms:GetKeyPolicy", mutating)
        by_account = self.control("GET", "calls?view=by-account")
        self.assertEqual(by_account[TARGET_ACCOUNT]["ec2:CopySnapshot"], 1)
        self.assertNotIn("ec2:CopySnapshot", by_account[SOURCE_ACCOUNT])

    # -- what must fail ---------------------------------------------------

    def copy_in_target(self, **config):
        """A copy in the target account, pending for `copy_pending_seconds`."""
        self.configure(**config)
        ec2, _, _, snap = self.source_setup()
        self.share(ec2, snap["SnapshotId"])
        target = self.target_credentials()
        tkey = self.target_key(target)
        tec2 = self.client("ec2", TARGET_REGION, target)
        copy = tec2.copy_snapshot(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                                  Encrypted=True, KmsKeyId=tkey["Arn"])
        return tec2, copy["SnapshotId"]

    def test_governance_lock_while_pending_starts_at_completion_and_refuses_delete(self):
        tec2, copy = self.copy_in_target(copy_pending_seconds=1)
        lock = tec2.lock_snapshot(SnapshotId=copy, LockMode="governance", LockDuration=2)
        self.assertEqual(lock["LockState"], "governance")
        self.assertNotIn("LockExpiresOn", lock)  # pending: the duration has not started
        self.wait_snapshot(tec2, copy)
        [info] = tec2.describe_locked_snapshots(SnapshotIds=[copy])["Snapshots"]
        self.assertEqual((info["LockState"], info["LockDuration"]), ("governance", 2))
        self.assertEqual((info["LockExpiresOn"] - info["LockDurationStartTime"]).days, 2)
        with self.assertRaises(ClientError) as refused:
            tec2.delete_snapshot(SnapshotId=copy)
        self.assertEqual(refused.exception.response["Error"]["Code"], "SnapshotLocked")
        # The same lock again changes nothing.
        again = tec2.lock_snapshot(SnapshotId=copy, LockMode="governance", LockDuration=2)
        self.assertEqual(again["LockExpiresOn"], info["LockExpiresOn"])
        # Governance can be unlocked, then the copy deleted.
        tec2.unlock_snapshot(SnapshotId=copy)
        self.assertEqual(tec2.describe_locked_snapshots(SnapshotIds=[copy])["Snapshots"], [])
        tec2.delete_snapshot(SnapshotId=copy)

    def test_compliance_lock_cool_off_expiry_and_other_accounts(self):
        # A day of 2.4 s: an hour of cool-off is 0.1 s.
        tec2, copy = self.copy_in_target(lock_day_seconds=2.4)
        lock = tec2.lock_snapshot(SnapshotId=copy, LockMode="compliance", LockDuration=1, CoolOffPeriod=1)
        self.assertEqual(lock["LockState"], "compliance-cooloff")
        # The source account cannot lock, or see the lock of, the target's copy.
        source = self.client("ec2", TARGET_REGION)
        with self.assertRaises(ClientError) as other:
            source.lock_snapshot(SnapshotId=copy, LockMode="governance", LockDuration=1)
        self.assertEqual(other.exception.response["Error"]["Code"], "InvalidSnapshot.NotFound")
        self.assertEqual(source.describe_locked_snapshots(SnapshotIds=[copy])["Snapshots"], [])
        time.sleep(0.2)
        [info] = tec2.describe_locked_snapshots(SnapshotIds=[copy])["Snapshots"]
        self.assertEqual(info["LockState"], "compliance")
        for call in (lambda: tec2.unlock_snapshot(SnapshotId=copy),
                     lambda: tec2.lock_snapshot(SnapshotId=copy, LockMode="governance", LockDuration=1),
                     lambda: tec2.delete_snapshot(SnapshotId=copy)):
            with self.assertRaises(ClientError):
                call()
        time.sleep(2.5)
        [info] = tec2.describe_locked_snapshots(SnapshotIds=[copy])["Snapshots"]
        self.assertEqual(info["LockState"], "expired")
        tec2.delete_snapshot(SnapshotId=copy)

    def test_a_copy_that_fails_loses_its_lock(self):
        self.configure(copy_pending_seconds=0.5)
        ec2, _, _, snap = self.source_setup(grant=False)
        self.share(ec2, snap["SnapshotId"])
        target = self.target_credentials()
        tec2 = self.client("ec2", TARGET_REGION, target)
        copy = tec2.copy_snapshot(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                                  Encrypted=True, KmsKeyId=self.target_key(target)["Arn"])["SnapshotId"]
        tec2.lock_snapshot(SnapshotId=copy, LockMode="governance", LockDuration=1)
        self.assertEqual(self.wait_snapshot(tec2, copy)["State"], "error")
        self.assertEqual(tec2.describe_locked_snapshots(SnapshotIds=[copy])["Snapshots"], [])
        tec2.delete_snapshot(SnapshotId=copy)

    def test_copy_without_key_grant_ends_in_error(self):
        self.configure(copy_pending_seconds=0.5)
        ec2, _key, _volume, snap = self.source_setup(grant=False)
        self.share(ec2, snap["SnapshotId"])
        target = self.target_credentials()
        tec2 = self.client("ec2", TARGET_REGION, target)
        copy = tec2.copy_snapshot(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                                  Encrypted=True, KmsKeyId=self.target_key(target)["Arn"])
        self.assertEqual(
            tec2.describe_snapshots(SnapshotIds=[copy["SnapshotId"]])["Snapshots"][0]["State"],
            "pending",
        )
        copied = self.wait_snapshot(tec2, copy["SnapshotId"])
        self.assertEqual(copied["State"], "error")
        self.assertEqual(copied["StateMessage"], "Given key ID is not accessible")

    def test_explicit_deny_wins(self):
        ec2, key, _volume, snap = self.source_setup()
        kms = self.client("kms", SOURCE_REGION)
        policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
        policy["Statement"].append({
            "Effect": "Deny", "Principal": {"AWS": TARGET_ACCOUNT},
            "Action": "kms:Decrypt", "Resource": "*"})
        kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps(policy))
        self.share(ec2, snap["SnapshotId"])
        target = self.target_credentials()
        tec2 = self.client("ec2", TARGET_REGION, target)
        copy = tec2.copy_snapshot(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                                  Encrypted=True, KmsKeyId=self.target_key(target)["Arn"])
        self.assertEqual(self.wait_snapshot(tec2, copy["SnapshotId"])["State"], "error")

    def test_deny_for_another_account_leaves_the_owner_alone(self):
        kms = self.client("kms", SOURCE_REGION)
        key = kms.create_key()["KeyMetadata"]
        policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
        policy["Statement"].append({
            "Effect": "Deny", "Principal": {"AWS": f"arn:aws:iam::{TARGET_ACCOUNT}:root"},
            "Action": "kms:*", "Resource": "*"})
        kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps(policy))
        self.assertEqual(kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["Arn"], key["Arn"])
        policy["Statement"][-1]["Principal"] = {"AWS": SOURCE_ACCOUNT}
        kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps(policy),
                           BypassPolicyLockoutSafetyCheck=True)
        with self.assertRaises(ClientError) as err:
            kms.describe_key(KeyId=key["KeyId"])
        self.assertEqual(err.exception.response["Error"]["Code"], "AccessDeniedException")

    def test_copy_under_missing_target_key_ends_in_error(self):
        ec2, _key, _volume, snap = self.source_setup()
        self.share(ec2, snap["SnapshotId"])
        target = self.target_credentials()
        tec2 = self.client("ec2", TARGET_REGION, target)
        missing = f"arn:aws:kms:{TARGET_REGION}:{TARGET_ACCOUNT}:key/00000000-0000-0000-0000-000000000000"
        copy = tec2.copy_snapshot(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                                  Encrypted=True, KmsKeyId=missing)
        copied = self.wait_snapshot(tec2, copy["SnapshotId"])
        self.assertEqual((copied["State"], copied["StateMessage"]),
                         ("error", "Given key ID is not accessible"))
        self.assertEqual(copied["KmsKeyId"], missing)

    def test_copy_of_unshared_snapshot_is_not_found(self):
        _ec2, _key, _volume, snap = self.source_setup()
        target = self.target_credentials()
        tec2 = self.client("ec2", TARGET_REGION, target)
        with self.assertRaises(ClientError) as err:
            tec2.copy_snapshot(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                               Encrypted=True, KmsKeyId=self.target_key(target)["Arn"])
        self.assertEqual(err.exception.response["Error"]["Code"], "InvalidSnapshot.NotFound")
        with self.assertRaises(ClientError) as err:
            self.client("ec2", SOURCE_REGION, target).describe_snapshots(
                SnapshotIds=[snap["SnapshotId"]])
        self.assertEqual(err.exception.response["Error"]["Code"], "InvalidSnapshot.NotFound")

    def test_aws_managed_key_snapshot_cannot_be_shared(self):
        ec2 = self.client("ec2", SOURCE_REGION)
        kms = self.client("kms", SOURCE_REGION)
        default = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, Encrypted=True)
        managed = kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]
        self.assertEqual(managed["KeyManager"], "AWS")
        self.assertEqual(default["KmsKeyId"], managed["Arn"])
        by_alias = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, Encrypted=True,
                                     KmsKeyId="alias/aws/ebs")
        self.assertEqual(by_alias["KmsKeyId"], managed["Arn"])
        snap = ec2.create_snapshot(VolumeId=by_alias["VolumeId"])
        self.assertEqual(snap["KmsKeyId"], managed["Arn"])
        with self.assertRaises(ClientError) as err:
            self.share(ec2, snap["SnapshotId"])
        self.assertEqual(err.exception.response["Error"]["Code"], "OperationNotPermitted")
        # Re-encrypted under a customer managed key, it can be shared.
        cmk = kms.create_key()["KeyMetadata"]
        copy = ec2.copy_snapshot(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                                 Encrypted=True, KmsKeyId=cmk["KeyId"])
        self.assertEqual(self.wait_snapshot(ec2, copy["SnapshotId"])["KmsKeyId"], cmk["Arn"])
        self.share(ec2, copy["SnapshotId"])

    def test_cross_account_describe_key_needs_the_policy(self):
        kms = self.client("kms", SOURCE_REGION)
        key = kms.create_key()["KeyMetadata"]
        target_kms = self.client("kms", SOURCE_REGION, self.target_credentials())
        with self.assertRaises(ClientError) as err:
            target_kms.describe_key(KeyId=key["Arn"])
        self.assertEqual(err.exception.response["Error"]["Code"], "AccessDeniedException")

    # -- throttling and limits --------------------------------------------

    def test_throttle_everything(self):
        self.configure(throttle_rate=1)
        ec2 = self.client("ec2", SOURCE_REGION)
        with self.assertRaises(ClientError) as err:
            ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)
        self.assertEqual(err.exception.response["Error"]["Code"], "RequestLimitExceeded")
        self.assertEqual(err.exception.response["Error"]["Message"], "Request limit exceeded.")
        self.assertEqual(err.exception.response["ResponseMetadata"]["HTTPStatusCode"], 503)
        # Nothing was done; KMS is not throttled.
        self.configure(throttle_rate=0)
        self.assertEqual(ec2.describe_volumes(
            Filters=[{"Name": "size", "Values": ["8"]}, {"Name": "availability-zone",
                                                      "Values": ["us-east-1b"]}])["Volumes"], [])
        self.client("kms", SOURCE_REGION).list_keys()
        self.assertEqual(self.control("GET", "calls?view=throttled"), {"ec2:CreateVolume": 1})

    def test_throttle_some_actions_reproducibly(self):
        ec2 = self.client("ec2", SOURCE_REGION)

        def outcomes():
            self.configure(throttle_rate=0.5, throttle_seed=7,
                           throttle_actions=["DescribeSnapshots"])
            result = []
            for _ in range(20):
                try:
                    ec2.describe_snapshots(OwnerIds=["self"])
                    result.append("ok")
                except ClientError as err:
                    result.append(err.response["Error"]["Code"])
            ec2.describe_volumes()  # not in throttle_actions: never throttled
            return result

        first, second = outcomes(), outcomes()
        self.assertEqual(first, second)
        self.assertIn("ok", first)
        self.assertIn("RequestLimitExceeded", first)

    def test_concurrent_copy_limit(self):
        self.configure(copy_pending_seconds=30, max_concurrent_copies=1)
        ec2, key, _volume, snap = self.source_setup()
        args = dict(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                    Encrypted=True, KmsKeyId=key["Arn"])
        ec2.copy_snapshot(**args)
        with self.assertRaises(ClientError) as err:
            ec2.copy_snapshot(**args)
        self.assertEqual(err.exception.response["Error"]["Code"], "ResourceLimitExceeded")

    def _blocks(self, ebs, snapshot_id):
        """Every (index, checksum) of a snapshot, page by page."""
        out, token = [], None
        while True:
            args = {"SnapshotId": snapshot_id, "MaxResults": 100}
            if token:
                args["NextToken"] = token
            page = ebs.list_snapshot_blocks(**args)
            self.assertEqual(page["BlockSize"], 524288)
            for b in page["Blocks"]:
                self.assertIsInstance(b["BlockIndex"], int)
                got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"],
                                             BlockToken=b["BlockToken"])
                data = got["BlockData"].read()
                self.assertEqual(len(data), got["DataLength"])
                self.assertEqual(got["Checksum"], base64.b64encode(hashlib.sha256(data).digest()).decode())
                out.append((b["BlockIndex"], got["Checksum"]))
            token = page.get("NextToken")
            if not token:
                return out

    def test_ebs_direct_reads_of_a_copy_equal_its_source_unless_corrupted(self):
        ec2, key, volume, snap = self.source_setup()
        ebs = self.client("ebs", SOURCE_REGION)
        source = self._blocks(ebs, snap["SnapshotId"])
        self.assertEqual(len(source), 150)
        self.assertEqual([i for i, _ in source], sorted(i for i, _ in source))
        # Another account cannot read the snapshot's blocks.
        target = self.target_credentials()
        with self.assertRaises(ClientError) as err:
            self.client("ebs", SOURCE_REGION, target).list_snapshot_blocks(SnapshotId=snap["SnapshotId"])
        self.assertEqual(err.exception.response["Error"]["Code"], "ResourceNotFoundException")
        # A copy into the other region, under a key there.
        dst_key = self.client("kms", TARGET_REGION).create_key(Description="dst")["KeyMetadata"]
        args = dict(SourceRegion=SOURCE_REGION, SourceSnapshotId=snap["SnapshotId"],
                    Encrypted=True, KmsKeyId=dst_key["Arn"])
        dst = self.client("ec2", TARGET_REGION)
        good = self.wait_snapshot(dst, dst.copy_snapshot(**args)["SnapshotId"])
        self.assertEqual(self._blocks(self.client("ebs", TARGET_REGION), good["SnapshotId"]), source)
        self.configure(corrupt_copies_of=volume["VolumeId"])
        bad = self.wait_snapshot(dst, dst.copy_snapshot(**args)["SnapshotId"])
        copied = self._blocks(self.client("ebs", TARGET_REGION), bad["SnapshotId"])
        self.assertEqual([i for i, _ in copied], [i for i, _ in source])
        differ = [i for (i, a), (_, b) in zip(source, copied) if a != b]
        self.assertEqual(differ, [source[1][0]])

    def test_control_api_rejects_bad_options(self):
        with self.assertRaises(urllib.error.HTTPError) as err:
            self.configure(throttle_rate=2)
        self.assertEqual(err.exception.code, 400)
        with self.assertRaises(urllib.error.HTTPError) as err:
            self.configure(no_such_option=1)
        self.assertEqual(err.exception.code, 400)
        self.assertEqual(self.control("GET", "config")["throttle_rate"], 0)


if __name__ == "__main__":
    unittest.main()
