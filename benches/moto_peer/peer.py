#!/usr/bin/env python3
"""Copy encrypted EBS volumes to another account and region, the way it is usually
scripted by hand with boto3: one volume after the other, stock waiters.

For each volume, in order:
  1. create_snapshot, then the snapshot_completed waiter;
     if the snapshot is not under the shareable key: copy_snapshot re-encrypting it
     under that key (same account and region), waiter, delete the first snapshot;
  2. key policy: get_key_policy, append the cross-account statements if they are not
     there yet, put_key_policy;
  3. modify_snapshot_attribute: share with the target account;
  4. sts assume_role into the target account; copy_snapshot in the target region
     (Encrypted, KmsKeyId, SourceRegion), then the snapshot_completed waiter;
  5. create_volume from the copy, then the volume_available waiter;
     delete the source snapshot.

The loop is sequential on purpose: it is the plain script, not a tuned one. Waiters
use botocore's default timing (Delay 15 s, MaxAttempts 40), set explicitly below.
Endpoint and credentials come from the usual AWS environment (AWS_ENDPOINT_URL works).

Prints one JSON document on stdout: per source volume, the snapshots and the volume made.
"""
import argparse
import json
import sys
import time

import boto3

# botocore's own defaults for these waiters (ec2 waiters-2.json); written out because
# they are what this comparison is about.
SNAPSHOT_WAITER = {"Delay": 15, "MaxAttempts": 40}
VOLUME_WAITER = {"Delay": 15, "MaxAttempts": 40}


def log(msg):
    print("%s %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def share_statements(key_arn, target_account):
    """The two statements the console adds for "Other AWS accounts"."""
    root = "arn:aws:iam::%s:root" % target_account
    return [
        {
            "Sid": "AllowUseOfTheKey-%s" % target_account,
            "Effect": "Allow",
            "Principal": {"AWS": root},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                       "kms:GenerateDataKey*", "kms:DescribeKey"],
            "Resource": "*",
        },
        {
            "Sid": "AllowAttachmentOfPersistentResources-%s" % target_account,
            "Effect": "Allow",
            "Principal": {"AWS": root},
            "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
            "Resource": "*",
            "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
        },
    ]


def grant_target_account(kms, key_arn, target_account):
    policy = json.loads(kms.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"])
    have = {s.get("Sid") for s in policy.get("Statement", [])}
    wanted = [s for s in share_statements(key_arn, target_account) if s["Sid"] not in have]
    if wanted:
        policy["Statement"].extend(wanted)
        kms.put_key_policy(KeyId=key_arn, PolicyName="default", Policy=json.dumps(policy))


def tag_spec(resource_type, tags):
    return [{"ResourceType": resource_type,
             "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


def copy_volume(a, src_ec2, kms, sts, key_arn, volume_id):
    # 1. Snapshot.
    snap = src_ec2.create_snapshot(
        VolumeId=volume_id, Description="DR copy of %s" % volume_id,
        TagSpecifications=tag_spec("snapshot", {"dr:source-volume": volume_id}))
    snap_id = snap["SnapshotId"]
    src_ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap_id], WaiterConfig=SNAPSHOT_WAITER)
    log("%s: snapshot %s completed" % (volume_id, snap_id))

    if snap.get("KmsKeyId") != key_arn:
        first = snap_id
        snap_id = src_ec2.copy_snapshot(
            SourceRegion=a.source_region, SourceSnapshotId=first, Encrypted=True, KmsKeyId=key_arn,
            TagSpecifications=tag_spec("snapshot", {"dr:source-volume": volume_id}))["SnapshotId"]
        src_ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap_id], WaiterConfig=SNAPSHOT_WAITER)
        src_ec2.delete_snapshot(SnapshotId=first)
        log("%s: re-encrypted as %s" % (volume_id, snap_id))

    # 2. Key policy.
    grant_target_account(kms, key_arn, a.target_account)

    # 3. Share.
    src_ec2.modify_snapshot_attribute(
        SnapshotId=snap_id, Attribute="createVolumePermission",
        OperationType="add", UserIds=[a.target_account])

    # 4. Copy in the target account and region.
    creds = sts.assume_role(RoleArn=a.role_arn, RoleSessionName="dr-copy")["Credentials"]
    target = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=a.target_region)
    dst_ec2 = target.client("ec2")
    copy_id = dst_ec2.copy_snapshot(
        SourceRegion=a.source_region, SourceSnapshotId=snap_id,
        Encrypted=True, KmsKeyId=a.target_key,
        Description="DR copy of %s" % volume_id,
        TagSpecifications=tag_spec("snapshot", {"dr:source-volume": volume_id}))["SnapshotId"]
    dst_ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[copy_id], WaiterConfig=SNAPSHOT_WAITER)
    log("%s: copy %s completed" % (volume_id, copy_id))

    # 5. Volume, then clean up the source side.
    vol_id = dst_ec2.create_volume(
        SnapshotId=copy_id, AvailabilityZone=a.availability_zone, Encrypted=True, KmsKeyId=a.target_key,
        TagSpecifications=tag_spec("volume", {"dr:source-volume": volume_id}))["VolumeId"]
    dst_ec2.get_waiter("volume_available").wait(VolumeIds=[vol_id], WaiterConfig=VOLUME_WAITER)
    src_ec2.delete_snapshot(SnapshotId=snap_id)
    log("%s: volume %s available" % (volume_id, vol_id))
    return {"source_volume": volume_id, "shared_snapshot": snap_id,
            "target_snapshot": copy_id, "target_volume": vol_id}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source-region", required=True)
    p.add_argument("--source-key", required=True, help="shareable customer managed key (id, ARN or alias)")
    p.add_argument("--target-account", required=True)
    p.add_argument("--role-arn", required=True)
    p.add_argument("--target-region", required=True)
    p.add_argument("--target-key", required=True)
    p.add_argument("--availability-zone", required=True)
    p.add_argument("volumes", nargs="+")
    a = p.parse_args()

    src_ec2 = boto3.client("ec2", region_name=a.source_region)
    kms = boto3.client("kms", region_name=a.source_region)
    sts = boto3.client("sts", region_name=a.source_region)
    key_arn = kms.describe_key(KeyId=a.source_key)["KeyMetadata"]["Arn"]

    done = []
    for volume_id in a.volumes:
        done.append(copy_volume(a, src_ec2, kms, sts, key_arn, volume_id))
    print(json.dumps({"volumes": done}))


if __name__ == "__main__":
    main()
