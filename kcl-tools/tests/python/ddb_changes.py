"""Writes a DynamoDB table's changes with boto3 against moto's server, for kcl-tools/tests/dynamodb_streams.rs.

  ddb_changes.py ENDPOINT create TABLE          a table (pk: S) with a NEW_AND_OLD_IMAGES stream
  ddb_changes.py ENDPOINT write TABLE FIRST N   N changes numbered FIRST.. over 50 keys

`write` prints one JSON line per change, in the order made: {"key", "event", "new", "old"},
`new`/`old` the item's attribute `v` after/before the change (null when there is no such image).
Change i goes to key i % 50: a put when the item is absent (INSERT), else a delete every 7th
change (REMOVE), else an update or a whole-item put on alternate changes (MODIFY).
"""
import json
import sys

import boto3


def client(endpoint):
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def main():
    endpoint, command, table = sys.argv[1:4]
    ddb = client(endpoint)
    if command == "create":
        ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        return
    first, count = int(sys.argv[4]), int(sys.argv[5])
    items = {}
    for page in ddb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            items[item["pk"]["S"]] = int(item["v"]["N"])
    for i in range(first, first + count):
        key = "k%02d" % (i % 50)
        old = items.get(key)
        if old is None:
            ddb.put_item(TableName=table, Item={"pk": {"S": key}, "v": {"N": str(i)}})
            event, new = "INSERT", i
        elif i % 7 == 0:
            ddb.delete_item(TableName=table, Key={"pk": {"S": key}})
            event, new = "REMOVE", None
        elif i % 2 == 0:
            ddb.update_item(TableName=table, Key={"pk": {"S": key}}, UpdateExpression="SET v = :v",
                            ExpressionAttributeValues={":v": {"N": str(i)}})
            event, new = "MODIFY", i
        else:
            ddb.put_item(TableName=table, Item={"pk": {"S": key}, "v": {"N": str(i)}})
            event, new = "MODIFY", i
        if new is None:
            items.pop(key, None)
        else:
            items[key] = new
        print(json.dumps({"key": key, "event": event, "new": new, "old": old}), flush=True)


if __name__ == "__main__":
    main()
