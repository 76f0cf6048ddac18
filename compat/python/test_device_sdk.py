"""The official Python device SDK, PyPI azure-iot-device 2.14.0, against ferrohub.

Each device reaches the hub only through its device connection string (built
from the keys azure-iot-hub's IoTHubRegistryManager returns when it creates the
device) over MQTT on TLS port 8883 and over `websockets=True` (port 443). The
SDK checks the server certificate against OpenSSL's default trust paths, which
honour SSL_CERT_FILE (`ferrohub env` points it at the hub's CA bundle); one
test passes the CA explicitly as `server_verification_cert` instead.

Telemetry is read with `ferrohub monitor-events` and cloud-to-device messages
are sent with `ferrohub c2d-message send` (FERROHUB_BIN, set by
scripts/test.sh). Nothing sleeps: every step waits for an event, a queue item
or a line of output, with a timeout.
"""

import json
import os
import queue
import re
import secrets
import subprocess
import threading
import time

import pytest
from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse
from azure.iot.hub.protocol.models import CloudToDeviceMethod, Twin, TwinProperties

from conftest import unique_device_id

# How long any one awaited event may take, in seconds.
STEP = 20


def host_name(connection_string):
    match = re.search(r"(?:^|;)HostName=([^;]+)", connection_string)
    assert match, "IOTHUB_CONNECTION_STRING has no HostName"
    return match.group(1)


def ferrohub_bin():
    path = os.environ.get("FERROHUB_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("FERROHUB_BIN is not an executable: {!r}".format(path))
    return path


def get(q, what, timeout=STEP):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        pytest.fail("timed out after {}s waiting for {}".format(timeout, what))


class Device:
    """A connected IoTHubDeviceClient and what its handlers received."""

    def __init__(self, device_id, client):
        self.device_id = device_id
        self.client = client
        self.patches = queue.Queue()
        self.methods = queue.Queue()
        self.messages = queue.Queue()


def connect_device(registry, connection_string, device_id, **client_kwargs):
    device = registry.create_device_with_sas(device_id, "", "", "enabled")
    key = device.authentication.symmetric_key.primary_key
    device_cs = "HostName={};DeviceId={};SharedAccessKey={}".format(
        host_name(connection_string), device_id, key
    )
    client = IoTHubDeviceClient.create_from_connection_string(device_cs, **client_kwargs)
    client.connect()
    return Device(device_id, client)


@pytest.fixture(scope="module", params=["tcp", "websockets"])
def dev(request, registry, connection_string):
    """One connected device per transport, shared by the tests below in order."""
    assert os.environ.get("SSL_CERT_FILE"), 'SSL_CERT_FILE is not set (run: eval "$(ferrohub env)")'
    websockets = request.param == "websockets"
    device_id = unique_device_id("dev-" + request.param)
    device = connect_device(registry, connection_string, device_id, websockets=websockets)
    device.transport = request.param
    yield device
    try:
        device.client.shutdown()
    finally:
        registry.delete_device(device_id)


def test_get_twin(dev):
    twin = dev.client.get_twin()
    assert isinstance(twin["desired"]["$version"], int), twin
    assert isinstance(twin["reported"]["$version"], int), twin


def test_reported_properties_reach_the_service_sdk(dev, registry):
    patch = {"firmware": {"version": "1.2.3", "state": "current"}, "transport": dev.transport}
    dev.client.patch_twin_reported_properties(patch)
    reported = registry.get_twin(dev.device_id).properties.reported
    assert reported["firmware"] == patch["firmware"]
    assert reported["transport"] == dev.transport
    dev.client.patch_twin_reported_properties({"transport": None})
    reported = registry.get_twin(dev.device_id).properties.reported
    assert "transport" not in reported
    assert dev.client.get_twin()["reported"]["firmware"] == patch["firmware"]


def test_desired_patch_from_update_twin(dev, registry):
    # The setter returns once the SUBACK for the desired-patch topic is in.
    dev.client.on_twin_desired_properties_patch_received = dev.patches.put
    before = registry.get_twin(dev.device_id).properties.desired["$version"]
    marker = secrets.token_hex(6)
    registry.update_twin(
        dev.device_id,
        Twin(properties=TwinProperties(desired={"fwTarget": {"marker": marker, "version": "2.0.0"}})),
        "*",
    )
    deadline = time.monotonic() + STEP
    while True:
        patch = get(dev.patches, "the desired patch", max(0.1, deadline - time.monotonic()))
        if patch.get("fwTarget", {}).get("marker") == marker:
            break
    assert patch["fwTarget"]["version"] == "2.0.0"
    assert patch["$version"] == before + 1


def test_direct_method_from_the_service_sdk(dev, registry):
    def on_method(request):
        dev.methods.put((request.name, request.payload))
        response = MethodResponse.create_from_method_request(
            request, 201, {"rebooted": True, "echo": request.payload}
        )
        dev.client.send_method_response(response)

    # The setter returns once the SUBACK for the method topic is in.
    dev.client.on_method_request_received = on_method
    payload = {"delay": 3, "reason": "compat " + dev.transport}
    result = registry.invoke_device_method(
        dev.device_id,
        CloudToDeviceMethod(
            method_name="reboot",
            payload=payload,
            response_timeout_in_seconds=15,
            connect_timeout_in_seconds=5,
        ),
    )
    assert result.status == 201
    assert result.payload == {"rebooted": True, "echo": payload}
    assert get(dev.methods, "the method call") == ("reboot", payload)


class Monitor:
    """`ferrohub monitor-events` for one device, read on background threads."""

    def __init__(self, device_id):
        self.proc = subprocess.Popen(
            [ferrohub_bin(), "monitor-events", "--device-id", device_id, "--properties", "all",
             "--timeout", "10"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready = threading.Event()
        self.events = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "Starting event monitor" in line:
                self.ready.set()

    def _read_stdout(self):
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.proc.stdout:
            buffer += line
            while True:
                stripped = buffer.lstrip()
                if not stripped:
                    buffer = ""
                    break
                try:
                    value, end = decoder.raw_decode(stripped)
                except json.JSONDecodeError:
                    buffer = stripped
                    break
                self.events.put(value)
                buffer = stripped[end:]

    def wait_ready(self):
        if not self.ready.wait(STEP):
            pytest.fail("monitor-events never said it was ready: {}".format("".join(self.stderr)))

    def wait_for(self, pred):
        deadline = time.monotonic() + STEP
        seen = []
        while time.monotonic() < deadline:
            try:
                value = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(value)
            if pred(value):
                return value
        pytest.fail("monitor-events did not print the event; printed {}; stderr {}".format(
            seen, "".join(self.stderr)))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT, as Ctrl-C
        return self.proc.wait(timeout=STEP)


def test_telemetry_is_printed_by_monitor_events(dev):
    monitor = Monitor(dev.device_id)
    try:
        monitor.wait_ready()
        marker = secrets.token_hex(6)
        message = Message(
            json.dumps({"temperature": 21.5, "marker": marker}),
            message_id="mid-" + marker,
            content_encoding="utf-8",
            content_type="application/json",
        )
        message.custom_properties["alert"] = "high temp"
        dev.client.send_message(message)
        printed = monitor.wait_for(
            lambda v: isinstance(v.get("event", {}).get("payload"), dict)
            and v["event"]["payload"].get("marker") == marker
        )
        assert printed["event"]["origin"] == dev.device_id
        assert printed["event"]["payload"] == {"temperature": 21.5, "marker": marker}
        assert printed["event"]["properties"]["application"]["alert"] == "high temp"
        assert "mid-" + marker in json.dumps(printed["event"]["properties"]["system"])
    finally:
        assert monitor.stop() in (0, -2)


def test_c2d_message_from_ferrohub_cli(dev):
    # The setter returns once the SUBACK for the C2D topic is in.
    dev.client.on_message_received = dev.messages.put
    marker = secrets.token_hex(6)
    sent = subprocess.run(
        [ferrohub_bin(), "c2d-message", "send", "--device-id", dev.device_id,
         "--data", "hello " + marker, "--props", "color=blue;marker=" + marker,
         "--message-id", "c2d-" + marker, "--correlation-id", "corr-" + marker],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=STEP,
    )
    assert sent.returncode == 0, sent.stderr
    message = get(dev.messages, "the C2D message")
    assert message.data == ("hello " + marker).encode()
    assert message.message_id == "c2d-" + marker
    assert message.correlation_id == "corr-" + marker
    assert message.custom_properties["color"] == "blue"
    assert message.custom_properties["marker"] == marker

    # A second message, queued after the first was acknowledged, arrives too.
    sent = subprocess.run(
        [ferrohub_bin(), "c2d-message", "send", "--device-id", dev.device_id, "--data", "again " + marker],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=STEP,
    )
    assert sent.returncode == 0, sent.stderr
    assert get(dev.messages, "the second C2D message").data == ("again " + marker).encode()


def test_server_verification_cert_from_ferrohub_ca(registry, connection_string, new_id):
    """The CA passed explicitly, as the SDK's own option, instead of SSL_CERT_FILE."""
    ca_file = os.environ.get("FERROHUB_CA")
    assert ca_file, 'FERROHUB_CA is not set (run: eval "$(ferrohub env)")'
    with open(ca_file) as f:
        ca = f.read()
    device = connect_device(registry, connection_string, new_id("ca"), server_verification_cert=ca)
    try:
        assert isinstance(device.client.get_twin()["desired"]["$version"], int)
    finally:
        device.client.shutdown()
