"""Automatic device configurations through the official Python service SDK,
PyPI azure-iot-hub 2.7.0 (IoTHubConfigurationManager), against ferrohub.

What the SDK sends and accepts (azure/iot/hub/iothub_configuration_manager.py
and protocol/operations/configuration_operations.py), api-version 2021-04-12:

- create_configuration(cfg): PUT /configurations/{id}, no If-Match, body =
  the model's non-None fields (no schemaVersion unless set); accepts 200 or 201.
- update_configuration(cfg, etag): the same PUT with ``If-Match: <etag>`` as
  given (not quoted); accepts 200 or 201.
- get_configuration(id): GET /configurations/{id}; accepts 200.
- get_configurations(max_count): GET /configurations[?top=N]; accepts 200.
- delete_configuration(id, etag=None): DELETE with ``If-Match: <etag>``, or
  ``*`` when no etag; accepts only 204.
- test_configuration_queries(input): POST /configurations/testQueries with
  {targetCondition, customMetricQueries}; accepts 200, answers
  {targetConditionError, customMetricQueryErrors}.
Any other status raises msrest's HttpOperationError.

Configurations here target tags that only this file's devices carry.
"""

import time

import pytest
from azure.iot.hub import IoTHubConfigurationManager
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationMetrics,
    ConfigurationQueriesTestInput,
    QuerySpecification,
    Twin,
)
from msrest.exceptions import HttpOperationError

from conftest import RUN_ID, describe_exchange

WAIT_S = 60
POLL_S = 0.2
_counter = iter(range(1, 1000000))


def expect_status(status, fn, *args, code=None, **kwargs):
    """Calls an SDK method that must fail with the given HTTP status (and Azure error code)."""
    with pytest.raises(HttpOperationError) as info:
        fn(*args, **kwargs)
    response = info.value.response
    assert response.status_code == status, "expected HTTP {}, got {}\n{}".format(
        status, response.status_code, describe_exchange(info.value))
    if code is not None:
        assert response.headers.get("iothub-errorcode") == code, describe_exchange(info.value)
    return info.value


def wait_for(label, probe):
    """Polls probe() until it returns (True, state); fails with the last state after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        done, state = probe()
        if done:
            return state
        if time.monotonic() >= deadline:
            pytest.fail("timed out after {} s waiting for {}; last seen: {!r}".format(WAIT_S, label, state))
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def manager(connection_string):
    return IoTHubConfigurationManager.from_connection_string(connection_string)


@pytest.fixture
def new_config_id(manager):
    """Hands out unique configuration ids and deletes whatever of them exists afterwards."""
    ids = []

    def make(label="cfg"):
        config_id = "py-cfg-{}-{}-{}".format(RUN_ID, label, next(_counter))
        ids.append(config_id)
        return config_id

    yield make
    for config_id in ids:
        try:
            manager.delete_configuration(config_id)
        except HttpOperationError:
            pass


def tag_condition(value):
    return "tags.pycompat = '{}'".format(value)


def new_configuration(config_id, tag=None, **overrides):
    tag = tag or "{}-none".format(RUN_ID)  # a tag no device carries
    fields = dict(
        id=config_id,
        labels={"purpose": "compat"},
        content=ConfigurationContent(device_content={
            "properties.desired.pycompat": {"mode": "eco", "setpoint": 21.5},
            "properties.desired.pycompatLevel": 3,
        }),
        target_condition=tag_condition(tag),
        priority=5,
        metrics=ConfigurationMetrics(queries={
            "matching": "SELECT deviceId FROM devices WHERE {}".format(tag_condition(tag)),
            "eco": ("SELECT deviceId FROM devices WHERE configurations.[[{}]].status = 'Applied' "
                    "AND properties.reported.mode = 'eco'").format(config_id),
        }),
    )
    fields.update(overrides)
    return Configuration(**fields)


@pytest.fixture
def config(manager, new_config_id):
    """A freshly created configuration that targets nothing."""
    return manager.create_configuration(new_configuration(new_config_id()))


def test_create_configuration(manager, new_config_id):
    config_id = new_config_id()
    sent = new_configuration(config_id)
    cfg = manager.create_configuration(sent)
    assert cfg.id == config_id
    assert cfg.schema_version == "1.0"  # the SDK sends none: the hub's default
    assert cfg.labels == {"purpose": "compat"}
    assert cfg.content.device_content == sent.content.device_content
    assert cfg.target_condition == sent.target_condition
    assert cfg.priority == 5
    assert cfg.metrics.queries == sent.metrics.queries
    assert cfg.etag
    assert cfg.created_time_utc is not None
    assert cfg.last_updated_time_utc is not None
    assert cfg.system_metrics is not None


def test_create_existing_configuration_gives_409(manager, config):
    expect_status(409, manager.create_configuration, new_configuration(config.id, priority=99),
                  code="ConfigurationAlreadyExists")
    assert manager.get_configuration(config.id).priority == 5


def test_get_configuration(manager, config):
    fetched = manager.get_configuration(config.id)
    assert fetched.id == config.id
    assert fetched.etag == config.etag
    assert fetched.created_time_utc == config.created_time_utc
    assert fetched.content.device_content == config.content.device_content
    assert fetched.metrics.queries == config.metrics.queries


def test_get_configurations(manager, config, new_config_id):
    manager.create_configuration(new_configuration(new_config_id()))
    listed = manager.get_configurations()
    assert config.id in [c.id for c in listed]
    assert len(manager.get_configurations(max_count=1)) == 1


def test_update_configuration_with_etag(manager, config):
    # The configuration as read, read-only fields and all, sent back changed.
    cfg = manager.get_configuration(config.id)
    cfg.priority = 9
    cfg.target_condition = "{} AND tags.ring = 'early'".format(config.target_condition)
    cfg.labels = {"purpose": "compat", "changed": "yes"}
    cfg.metrics.queries = {"matching": cfg.metrics.queries["matching"]}
    updated = manager.update_configuration(cfg, cfg.etag)
    assert updated.priority == 9
    assert updated.target_condition == cfg.target_condition
    assert updated.labels == cfg.labels
    assert updated.metrics.queries == cfg.metrics.queries
    assert updated.content.device_content == config.content.device_content
    assert updated.created_time_utc == config.created_time_utc
    assert updated.etag != config.etag
    assert manager.get_configuration(config.id).etag == updated.etag

    # The etag it had before the update is stale now.
    expect_status(412, manager.update_configuration, new_configuration(config.id, priority=1), config.etag)
    assert manager.get_configuration(config.id).priority == 9

    # "*" updates whatever is there.
    forced = manager.update_configuration(new_configuration(config.id, priority=2), "*")
    assert forced.priority == 2
    assert forced.target_condition == config.target_condition


def test_changing_content_gives_400(manager, config):
    changed = new_configuration(
        config.id, content=ConfigurationContent(device_content={"properties.desired.pycompat": {"mode": "turbo"}}))
    expect_status(400, manager.update_configuration, changed, config.etag,
                  code="CannotModifyImmutableConfigurationContent")
    expect_status(400, manager.update_configuration, changed, "*", code="CannotModifyImmutableConfigurationContent")
    after = manager.get_configuration(config.id)
    assert after.content.device_content == config.content.device_content
    assert after.etag == config.etag


def test_delete_configuration_with_etag(manager, config):
    cfg = manager.get_configuration(config.id)
    cfg.priority = 6
    updated = manager.update_configuration(cfg, cfg.etag)
    expect_status(412, manager.delete_configuration, config.id, config.etag)
    assert manager.get_configuration(config.id).id == config.id
    manager.delete_configuration(config.id, updated.etag)
    expect_status(404, manager.get_configuration, config.id, code="ConfigurationNotFound")
    assert config.id not in [c.id for c in manager.get_configurations()]


def test_delete_configuration_without_etag(manager, config):
    manager.delete_configuration(config.id)  # the SDK sends If-Match: *
    expect_status(404, manager.get_configuration, config.id)


def test_unknown_configuration_gives_404(manager, new_config_id):
    missing = new_config_id("missing")
    expect_status(404, manager.get_configuration, missing, code="ConfigurationNotFound")
    expect_status(404, manager.delete_configuration, missing, code="ConfigurationNotFound")


def test_invalid_configurations_give_400(manager, new_config_id):
    config_id = new_config_id("bad")
    cases = [
        ({"target_condition": "tags.pycompat = "}, "InvalidConfigurationTargetCondition"),
        ({"metrics": ConfigurationMetrics(queries={k: "SELECT deviceId FROM devices" for k in "abcdef"})},
         "InvalidConfigurationCustomMetricsQuery"),
        ({"metrics": ConfigurationMetrics(queries={"bad": "SELECT FROM WHERE"})},
         "InvalidConfigurationCustomMetricsQuery"),
        ({"content": ConfigurationContent(device_content={"tags.x": 1})}, "InvalidConfigurationContent"),
    ]
    for overrides, code in cases:
        expect_status(400, manager.create_configuration, new_configuration(config_id, **overrides), code=code)
        expect_status(404, manager.get_configuration, config_id)


def test_configuration_queries(manager):
    good = manager.test_configuration_queries(ConfigurationQueriesTestInput(
        target_condition="tags.pycompat = 'x' AND properties.reported.mode = 'eco'",
        custom_metric_queries={
            "applied": "SELECT deviceId FROM devices WHERE configurations.[[x]].status = 'Applied'",
            "count": "SELECT COUNT() AS n FROM devices WHERE tags.pycompat = 'x'",
        },
    ))
    assert not good.target_condition_error, good.target_condition_error
    assert not any((good.custom_metric_query_errors or {}).values()), good.custom_metric_query_errors

    bad = manager.test_configuration_queries(ConfigurationQueriesTestInput(
        target_condition="tags.pycompat = ",
        custom_metric_queries={
            "fine": "SELECT deviceId FROM devices",
            "broken": "SELECT deviceId FROM devices WHERE (tags.a = 1",
        },
    ))
    assert bad.target_condition_error, "a target condition that does not parse was accepted"
    errors = bad.custom_metric_query_errors or {}
    assert errors.get("broken"), errors
    assert not errors.get("fine"), errors


def test_configuration_applies_to_the_devices_it_targets(manager, registry, new_id, new_config_id):
    """Tag a device: the configuration writes its desired properties and counts it; delete it: they go."""
    tag = "{}-target".format(RUN_ID)
    device_id = new_id("cfg")
    registry.create_device_with_sas(device_id, "", "", "enabled")
    registry.update_twin(device_id, Twin(tags={"pycompat": tag}), "*")
    config_id = new_config_id("target")
    cfg = new_configuration(config_id, tag=tag)
    manager.create_configuration(cfg)

    def desired():
        return registry.get_twin(device_id).properties.desired

    state = wait_for("the desired properties of {}".format(config_id), lambda: (
        lambda d: ("pycompat" in d and d.get("pycompatLevel") == 3, d))(desired()))
    assert state["pycompat"] == {"mode": "eco", "setpoint": 21.5}

    def results():
        c = manager.get_configuration(config_id)
        return (c.system_metrics.results or {}), (c.metrics.results or {})

    wait_for("{} to count the device".format(config_id), lambda: (
        lambda r: (r[0].get("targetedCount") == 1 and r[0].get("appliedCount") == 1
                   and r[1].get("matching") == 1 and r[1].get("eco") == 0, r))(results()))

    # The twin is marked Applied: the query language sees it (rows come back as Twin models).
    query = "SELECT * FROM devices WHERE configurations.[[{}]].status = 'Applied'".format(config_id)
    rows = registry.query_iot_hub(QuerySpecification(query=query)).items
    assert [row.device_id for row in rows] == [device_id]

    # Untagged: it is no longer targeted and the configuration's settings are removed.
    registry.update_twin(device_id, Twin(tags={"pycompat": None}), "*")
    wait_for("{} to lose the settings of {}".format(device_id, config_id), lambda: (
        lambda d: ("pycompat" not in d and "pycompatLevel" not in d, d))(desired()))
    wait_for("{} to count nothing".format(config_id), lambda: (
        lambda r: (r[0].get("targetedCount") == 0 and r[0].get("appliedCount") == 0
                   and r[1].get("matching") == 0, r))(results()))
