"""Fixtures for the official Python service SDK (azure-iot-hub 2.7.0) against ferrohub.

The hub is reached only through IOTHUB_CONNECTION_STRING; requests trusts the
hub's CA through REQUESTS_CA_BUNDLE. Both are exported by `ferrohub env`.
"""

import base64
import itertools
import os
import secrets
import time

import pytest
from azure.iot.hub import IoTHubRegistryManager
from msrest.exceptions import HttpOperationError

RUN_ID = "{:x}-{}".format(int(time.time()), secrets.token_hex(4))
_counter = itertools.count(1)


def unique_device_id(label="dev"):
    """A device id no earlier run used."""
    return "py-compat-{}-{}-{}".format(RUN_ID, label, next(_counter))


def random_key():
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="session")
def connection_string():
    value = os.environ.get("IOTHUB_CONNECTION_STRING")
    if not value:
        pytest.fail('IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")')
    return value


@pytest.fixture(scope="session")
def registry(connection_string):
    return IoTHubRegistryManager.from_connection_string(connection_string)


@pytest.fixture
def new_id(registry):
    """Hands out unique device ids and deletes whatever of them exists afterwards."""
    ids = []

    def make(label="dev"):
        device_id = unique_device_id(label)
        ids.append(device_id)
        return device_id

    yield make
    for device_id in ids:
        try:
            registry.delete_device(device_id)
        except HttpOperationError:
            pass


@pytest.fixture
def device(registry, new_id):
    """A freshly created enabled device with hub-generated keys."""
    return registry.create_device_with_sas(new_id(), "", "", "enabled")


def describe_exchange(err):
    """The request and response behind an HttpOperationError, for failure reports."""
    response = getattr(err, "response", None)
    if response is None:
        return None
    lines = []
    request = getattr(response, "request", None)
    if request is not None:
        lines.append("> {} {}".format(request.method, request.url))
        for name, value in request.headers.items():
            lines.append("> {}: {}".format(name, value))
        body = request.body
        if body:
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            lines.append("> " + body)
    lines.append("< {} {}".format(response.status_code, response.reason))
    for name, value in response.headers.items():
        lines.append("< {}: {}".format(name, value))
    lines.append("< " + response.text)
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the HTTP exchange to a failure caused by an unexpected HttpOperationError."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, HttpOperationError):
        text = describe_exchange(call.excinfo.value)
        if text:
            report.sections.append(("HTTP exchange", text))
