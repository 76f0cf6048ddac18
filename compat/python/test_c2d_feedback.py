"""Cloud-to-device feedback and purge with PyPI azure-iot-hub 2.7.0's protocol layer.

IoTHubHttpRuntimeManager's helpers return what the protocol layer returns
without `raw=True`, which drops the response (its body holds the records,
its ETag the lock token), so the tests call
`protocol.cloud_to_device_messages` directly, as an application that needs
the records must. The device is PyPI azure-iot-device 2.14.0 over MQTT (its
client acknowledges each message once the handler has it); messages are sent
with `ferrohub c2d-message send --ack` (the Python service SDK sends C2D over
AMQP, which ferrohub does not speak).

Feedback is one queue for the whole hub, so each test keeps only the records
of its own devices; every batch it reads is completed. Nothing sleeps on
hope: each wait polls an observable result with a deadline.
"""

import json
import queue
import secrets
import subprocess
import time

import pytest
from azure.iot.device import IoTHubDeviceClient
from azure.iot.hub import IoTHubHttpRuntimeManager
from msrest.exceptions import HttpOperationError

from test_device_sdk import STEP, ferrohub_bin, get, host_name

FEEDBACK_TYPE = "application/vnd.microsoft.iothub.feedback.json"
# Between two reads of the feedback queue, which has no push channel.
POLL = 0.05


@pytest.fixture(scope="module")
def c2d(connection_string):
    return IoTHubHttpRuntimeManager.from_connection_string(connection_string).protocol.cloud_to_device_messages


def send(device_id, message_id, ack):
    sent = subprocess.run(
        [ferrohub_bin(), "c2d-message", "send", "--device-id", device_id,
         "--data", "body of " + message_id, "--message-id", message_id, "--ack", ack],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=STEP,
    )
    assert sent.returncode == 0, sent.stderr


def receive(c2d):
    """(lock token, records) of the next batch, or None when the queue is empty."""
    raw = c2d.receive_feedback_notification(raw=True)
    response = raw.response
    if response.status_code == 204:
        return None
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(FEEDBACK_TYPE), response.headers
    etag = response.headers["ETag"]
    assert len(etag) > 2 and etag[0] == '"' and etag[-1] == '"', etag
    return etag[1:-1], json.loads(response.text)


def collect(c2d, device_ids, count):
    """Reads and completes batches until `count` records of `device_ids` arrived."""
    mine = []
    deadline = time.monotonic() + STEP
    while len(mine) < count:
        batch = receive(c2d)
        if batch is None:
            assert time.monotonic() < deadline, "feedback so far: {}".format(mine)
            time.sleep(POLL)
            continue
        token, records = batch
        mine.extend(r for r in records if r["deviceId"] in device_ids)
        c2d.complete_feedback_notification(token)
    return mine


def test_positive_ack_gives_success_once_the_device_has_the_message(registry, connection_string, c2d, new_id):
    device_id = new_id("ack")
    created = registry.create_device_with_sas(device_id, "", "", "enabled")
    device_cs = "HostName={};DeviceId={};SharedAccessKey={}".format(
        host_name(connection_string), device_id, created.authentication.symmetric_key.primary_key
    )
    client = IoTHubDeviceClient.create_from_connection_string(device_cs)
    client.connect()
    try:
        messages = queue.Queue()
        client.on_message_received = messages.put
        message_id = "pos-" + secrets.token_hex(4)
        send(device_id, message_id, "positive")
        assert get(messages, "the C2D message").message_id == message_id
        (record,) = collect(c2d, {device_id}, 1)
        assert record["originalMessageId"] == message_id
        assert record["statusCode"] == "Success"
        assert record["description"] == "Success"
        assert record["deviceGenerationId"] == created.generation_id
        assert record["enqueuedTimeUtc"].endswith("Z")
    finally:
        client.shutdown()


def test_purge_reports_the_count_and_purged_feedback(registry, c2d, new_id):
    device_id = new_id("purge")
    registry.create_device_with_sas(device_id, "", "", "enabled")
    for message_id, ack in (("p-full", "full"), ("p-neg", "negative"), ("p-none", "none")):
        send(device_id, message_id, ack)
    result = c2d.purge_cloud_to_device_message_queue(device_id)
    assert result.total_messages_purged == 3
    assert result.device_id == device_id
    records = collect(c2d, {device_id}, 2)
    assert sorted((r["originalMessageId"], r["statusCode"]) for r in records) == [
        ("p-full", "Purged"), ("p-neg", "Purged"),
    ]
    with pytest.raises(HttpOperationError) as err:
        c2d.purge_cloud_to_device_message_queue(new_id("ghost"))
    assert err.value.response.status_code == 404


def test_feedback_is_abandoned_or_completed_by_its_lock_token(registry, c2d, new_id):
    device_id = new_id("lock")
    registry.create_device_with_sas(device_id, "", "", "enabled")
    send(device_id, "l-1", "full")
    c2d.purge_cloud_to_device_message_queue(device_id)
    # Earlier suites may have left records: complete everything before ours.
    deadline = time.monotonic() + STEP
    while True:
        batch = receive(c2d)
        assert batch is not None or time.monotonic() < deadline, "no feedback for {}".format(device_id)
        if batch is None:
            time.sleep(POLL)
            continue
        token, records = batch
        if any(r["deviceId"] == device_id for r in records):
            break
        c2d.complete_feedback_notification(token)

    for settle in (c2d.complete_feedback_notification, c2d.abandon_feedback_notification):
        with pytest.raises(HttpOperationError) as err:
            settle("not-a-lock-token")
        assert err.value.response.status_code == 412
        assert err.value.response.headers["iothub-errorcode"] == "DeviceMessageLockLost"
    # A wrong token changed nothing: the batch is still locked to ours.
    assert receive(c2d) is None
    c2d.abandon_feedback_notification(token)
    again, records_again = receive(c2d)
    assert again != token
    assert records_again == records
    with pytest.raises(HttpOperationError) as err:
        c2d.complete_feedback_notification(token)
    assert err.value.response.status_code == 412
    c2d.complete_feedback_notification(again)
    assert receive(c2d) is None
