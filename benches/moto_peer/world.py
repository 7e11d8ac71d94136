#!/usr/bin/env python3
"""Seed the moto server for the benchmark, write the plan both sides copy, and count
what a run left behind.

Source account 123456789012 (plain test credentials), us-east-1: a customer managed
key with alias/share and N gp3 volumes encrypted under it. Target account 222222222222
(reached by AssumeRole into arn:aws:iam::222222222222:role/dr), eu-west-1: a key with
alias/dr.

Usage (endpoint and credentials from the AWS environment, AWS_ENDPOINT_URL included):
  world.py seed N PLAN_PATH    prints the volume ids and the key ARNs as JSON
  world.py inventory           prints counts of what is in both accounts as JSON
"""
import json
import sys

import boto3

ROLE = "arn:aws:iam::222222222222:role/dr"


def target_client(service, region):
    creds = boto3.client("sts", region_name="us-east-1").assume_role(
        RoleArn=ROLE, RoleSessionName="bench-world")["Credentials"]
    return boto3.client(service, region_name=region,
                        aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


def seed(count, plan_path):
    kms = boto3.client("kms", region_name="us-east-1")
    src = kms.create_key(Description="bench source")["KeyMetadata"]
    kms.create_alias(AliasName="alias/share", TargetKeyId=src["KeyId"])

    ec2 = boto3.client("ec2", region_name="us-east-1")
    volumes = []
    for i in range(count):
        volumes.append(ec2.create_volume(
            Size=8, AvailabilityZone="us-east-1a", VolumeType="gp3",
            Encrypted=True, KmsKeyId=src["Arn"],
            TagSpecifications=[{"ResourceType": "volume",
                                "Tags": [{"Key": "Name", "Value": "bench-%02d" % i}]}],
        )["VolumeId"])

    tkms = target_client("kms", "eu-west-1")
    dst = tkms.create_key(Description="bench target")["KeyMetadata"]
    tkms.create_alias(AliasName="alias/dr", TargetKeyId=dst["KeyId"])

    lines = [
        "version: 1",
        "name: moto-peer-bench",
        "source:",
        "  region: us-east-1",
        '  account: "123456789012"',
        "  kms_key: alias/share",
        "target:",
        "  region: eu-west-1",
        '  account: "222222222222"',
        "  role_arn: " + ROLE,
        "  kms_key: alias/dr",
        "  availability_zone: eu-west-1a",
        "volumes:",
    ]
    for i, v in enumerate(volumes):
        lines += ["  - id: " + v, "    tags: {Name: dr-%02d}" % i]
    lines += ["options:", "  cleanup: true", "  create_volume: true", ""]
    with open(plan_path, "w") as f:
        f.write("\n".join(lines))

    print(json.dumps({"volumes": volumes, "source_key": src["Arn"], "target_key": dst["Arn"]}))


def inventory():
    def states(items, key):
        out = {}
        for x in items:
            out[x[key]] = out.get(x[key], 0) + 1
        return out
    src_snaps = boto3.client("ec2", region_name="us-east-1").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    dst = target_client("ec2", "eu-west-1")
    dst_snaps = dst.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    dst_vols = dst.describe_volumes()["Volumes"]
    print(json.dumps({
        "source_snapshots": states(src_snaps, "State"),
        "target_snapshots": states(dst_snaps, "State"),
        "target_volumes": states(dst_vols, "State"),
    }))


def main():
    if sys.argv[1:2] == ["seed"] and len(sys.argv) == 4:
        seed(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:] == ["inventory"]:
        inventory()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
