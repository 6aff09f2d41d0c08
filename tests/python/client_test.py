"""The official Kubernetes Python client against a Flotilla API server.

Usage: client_test.py KUBECONFIG. Lists, creates, patches and watches (with and without a
resourceVersion) through the unmodified `kubernetes` package; exits non-zero on the first
difference from what a Kubernetes server would answer.
"""

import sys

from kubernetes import client, config, watch


def main(kubeconfig):
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration)
    core = client.CoreV1Api(api)

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert "py" in names, names

    created = core.create_namespaced_config_map(
        "py",
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings", labels={"app": "py"}), data={"a": "1"}),
    )
    assert created.metadata.uid, created
    first_rv = created.metadata.resource_version

    listed = core.list_namespaced_config_map("py", label_selector="app=py")
    assert [cm.metadata.name for cm in listed.items] == ["settings"], listed.items

    patched = core.patch_namespaced_config_map(
        "settings", "py", {"data": {"b": "2"}}, _content_type="application/merge-patch+json"
    )
    assert patched.data == {"a": "1", "b": "2"}, patched.data
    patched = core.patch_namespaced_config_map(
        "settings", "py", [{"op": "replace", "path": "/data/a", "value": "3"}]
    )
    assert patched.data == {"a": "3", "b": "2"}, patched.data

    # Resume from the first version: both patches, in order, then the stream times out.
    events = []
    for event in watch.Watch().stream(
        core.list_namespaced_config_map, "py", resource_version=first_rv, timeout_seconds=2
    ):
        events.append((event["type"], dict(event["object"].data)))
    assert events == [("MODIFIED", {"a": "1", "b": "2"}), ("MODIFIED", {"a": "3", "b": "2"})], events

    # No resourceVersion: the current object first, as ADDED.
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_config_map, "py", timeout_seconds=2):
        assert event["type"] == "ADDED", event["type"]
        assert event["object"].metadata.name == "settings"
        stream.stop()

    core.delete_namespaced_config_map("settings", "py")
    assert core.list_namespaced_config_map("py").items == []
    try:
        core.read_namespaced_config_map("settings", "py")
        raise AssertionError("a deleted config map is still readable")
    except client.exceptions.ApiException as e:
        assert e.status == 404, e.status

    # A dict patch is a strategic merge patch: containers merge by name.
    apps = client.AppsV1Api(api)
    container = lambda name, image: client.V1Container(name=name, image=image)
    apps.create_namespaced_deployment(
        "py",
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                selector=client.V1LabelSelector(match_labels={"app": "web"}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": "web"}),
                    spec=client.V1PodSpec(containers=[container("web", "web:1"), container("log", "log:1")]),
                ),
            ),
        ),
    )
    patched = apps.patch_namespaced_deployment(
        "web", "py", {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}}}
    )
    images = {c.name: c.image for c in patched.spec.template.spec.containers}
    assert images == {"web": "web:2", "log": "log:1"}, images
    print("python client: ok")


if __name__ == "__main__":
    main(sys.argv[1])
