"""The official Python service SDK, PyPI azure-iot-hub 2.7.0, against ferrohub.

IoTHubRegistryManager talks HTTPS to port 443 of the connection string's
HostName. It accepts only 200 for PUT/GET/PATCH and only 204 for DELETE, and
raises msrest's HttpOperationError for any other status.
"""

import re

import pytest
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.protocol.models import Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from conftest import describe_exchange, random_key


def expect_status(status, fn, *args, **kwargs):
    """Calls an SDK method that must fail with the given HTTP status."""
    with pytest.raises(HttpOperationError) as info:
        fn(*args, **kwargs)
    got = info.value.response.status_code
    assert got == status, "expected HTTP {}, got {}\n{}".format(status, got, describe_exchange(info.value))
    return info.value


def desired_of(twin):
    return twin.properties.desired


# --- device identities ---------------------------------------------------


@pytest.mark.parametrize("empty", ["", None], ids=["empty-keys", "no-keys"])
def test_create_device_with_sas_generates_keys(registry, new_id, empty):
    device_id = new_id()
    device = registry.create_device_with_sas(device_id, empty, empty, "enabled")
    assert device.device_id == device_id
    assert device.status == "enabled"
    assert device.generation_id
    assert device.etag
    assert device.connection_state == "Disconnected"
    assert device.authentication.type == "sas"
    keys = device.authentication.symmetric_key
    assert keys.primary_key and keys.secondary_key
    assert keys.primary_key != keys.secondary_key


def test_create_device_with_sas_keeps_given_keys(registry, new_id):
    primary, secondary = random_key(), random_key()
    device = registry.create_device_with_sas(new_id(), primary, secondary, "disabled",
                                             status_reason="made disabled")
    assert device.status == "disabled"
    assert device.status_reason == "made disabled"
    assert device.authentication.symmetric_key.primary_key == primary
    assert device.authentication.symmetric_key.secondary_key == secondary


def test_create_existing_device_gives_409(registry, device):
    expect_status(409, registry.create_device_with_sas, device.device_id, "", "", "enabled")


def test_get_device(registry, device):
    fetched = registry.get_device(device.device_id)
    assert fetched.device_id == device.device_id
    assert fetched.generation_id == device.generation_id
    assert fetched.etag == device.etag
    assert fetched.authentication.symmetric_key.primary_key == device.authentication.symmetric_key.primary_key


def test_get_devices_lists_the_device(registry, device):
    devices = registry.get_devices()
    assert device.device_id in [d.device_id for d in devices]
    assert len(registry.get_devices(max_number_of_devices=1)) == 1


def test_update_device_with_sas_with_etag(registry, device):
    keys = device.authentication.symmetric_key
    updated = registry.update_device_with_sas(device.device_id, device.etag, keys.primary_key,
                                              keys.secondary_key, "disabled", status_reason="maintenance")
    assert updated.status == "disabled"
    assert updated.status_reason == "maintenance"
    assert updated.etag != device.etag
    assert updated.generation_id == device.generation_id
    assert registry.get_device(device.device_id).status == "disabled"

    # The etag it had before the update is stale now.
    expect_status(412, registry.update_device_with_sas, device.device_id, device.etag,
                  keys.primary_key, keys.secondary_key, "enabled")
    assert registry.get_device(device.device_id).status == "disabled"

    # Without an etag the SDK sends If-Match "*": unconditional.
    forced = registry.update_device_with_sas(device.device_id, None, keys.primary_key,
                                             keys.secondary_key, "enabled")
    assert forced.status == "enabled"


def test_update_device_with_sas_rotates_keys(registry, device):
    primary, secondary = random_key(), random_key()
    updated = registry.update_device_with_sas(device.device_id, device.etag, primary, secondary, "enabled")
    assert updated.authentication.symmetric_key.primary_key == primary
    assert updated.authentication.symmetric_key.secondary_key == secondary


def test_delete_device_with_etag(registry, device):
    registry.delete_device(device.device_id, device.etag)
    expect_status(404, registry.get_device, device.device_id)
    assert device.device_id not in [d.device_id for d in registry.get_devices()]


def test_delete_device_with_stale_etag_gives_412(registry, device):
    keys = device.authentication.symmetric_key
    registry.update_device_with_sas(device.device_id, device.etag, keys.primary_key, keys.secondary_key,
                                    "disabled")
    expect_status(412, registry.delete_device, device.device_id, device.etag)
    assert registry.get_device(device.device_id).device_id == device.device_id


def test_delete_device_without_etag(registry, device):
    registry.delete_device(device.device_id)
    expect_status(404, registry.get_device, device.device_id)


def test_missing_device_gives_404(registry, new_id):
    missing = new_id("missing")
    expect_status(404, registry.get_device, missing)
    expect_status(404, registry.get_twin, missing)
    expect_status(404, registry.delete_device, missing)
    expect_status(404, registry.update_twin, missing, Twin(tags={"a": 1}), "*")


def test_special_characters_in_device_id(registry, new_id):
    # Every special character Azure allows; msrest percent-encodes all of them.
    device_id = new_id("x") + "-%_.*?!(),:=@$'"
    created = registry.create_device_with_sas(device_id, "", "", "enabled")
    assert created.device_id == device_id
    assert registry.get_device(device_id).device_id == device_id
    assert registry.get_twin(device_id).device_id == device_id
    registry.delete_device(device_id)
    expect_status(404, registry.get_device, device_id)


# --- twins ----------------------------------------------------------------


def test_get_twin(registry, device):
    twin = registry.get_twin(device.device_id)
    assert twin.device_id == device.device_id
    assert twin.etag
    assert isinstance(twin.version, int)
    assert twin.device_etag == device.etag
    assert twin.status == "enabled"
    assert not twin.tags
    assert isinstance(desired_of(twin)["$version"], int)
    assert isinstance(twin.properties.reported["$version"], int)


def test_update_twin_with_etag(registry, device):
    before = registry.get_twin(device.device_id)
    patch = Twin(tags={"devicetype": "chiller", "location": {"building": 43}},
                 properties=TwinProperties(desired={"telemetryInterval": 30, "fw": {"version": "1.0.0"}}))
    twin = registry.update_twin(device.device_id, patch, before.etag)
    assert twin.tags == {"devicetype": "chiller", "location": {"building": 43}}
    desired = desired_of(twin)
    assert desired["telemetryInterval"] == 30
    assert desired["fw"] == {"version": "1.0.0"}
    assert desired["$version"] == desired_of(before)["$version"] + 1
    assert twin.version > before.version
    assert twin.etag != before.etag

    # Merge: unnamed keys stay, null deletes.
    patch = Twin(tags={"location": {"floor": 2}},
                 properties=TwinProperties(desired={"telemetryInterval": None}))
    merged = registry.update_twin(device.device_id, patch, twin.etag)
    assert merged.tags == {"devicetype": "chiller", "location": {"building": 43, "floor": 2}}
    assert "telemetryInterval" not in desired_of(merged)
    assert desired_of(merged)["fw"] == {"version": "1.0.0"}
    assert desired_of(merged)["$version"] == desired["$version"] + 1

    fetched = registry.get_twin(device.device_id)
    assert fetched.tags == merged.tags
    assert fetched.etag == merged.etag


def test_update_twin_with_stale_etag_gives_412(registry, device):
    before = registry.get_twin(device.device_id)
    registry.update_twin(device.device_id, Twin(tags={"a": 1}), before.etag)
    expect_status(412, registry.update_twin, device.device_id, Twin(tags={"b": 2}), before.etag)
    assert registry.get_twin(device.device_id).tags == {"a": 1}


def test_update_twin_without_etag_is_unconditional(registry, device):
    twin = registry.update_twin(device.device_id, Twin(tags={"forced": True}))
    assert twin.tags == {"forced": True}


def test_replace_twin(registry, device):
    before = registry.get_twin(device.device_id)
    seeded = registry.update_twin(
        device.device_id,
        Twin(tags={"old": 1, "keep": "no"}, properties=TwinProperties(desired={"x": 1, "y": {"z": 2}})),
        before.etag)
    replacement = Twin(tags={"new": "yes"}, properties=TwinProperties(desired={"w": 3}))
    twin = registry.replace_twin(device.device_id, replacement, seeded.etag)
    assert twin.tags == {"new": "yes"}
    desired = desired_of(twin)
    assert desired["w"] == 3
    assert "x" not in desired and "y" not in desired
    assert desired["$version"] == desired_of(seeded)["$version"] + 1
    assert twin.etag != seeded.etag

    expect_status(412, registry.replace_twin, device.device_id,
                  Twin(tags={"stale": 1}, properties=TwinProperties(desired={})), seeded.etag)
    assert registry.get_twin(device.device_id).tags == {"new": "yes"}


def test_wrong_key_gives_401(connection_string, device):
    forged = re.sub(r"SharedAccessKey=[^;]*", "SharedAccessKey=" + random_key(), connection_string)
    assert forged != connection_string
    expect_status(401, IoTHubRegistryManager.from_connection_string(forged).get_device, device.device_id)
