#!/usr/bin/env python3
"""API-shaped JSON served by the upstream: a pod, a large ConfigMap, a 500-pod list."""
import json, os, sys

out = sys.argv[1]

def pod(i):
    name = f"web-{i:04d}-7c9f8d6b5-x{i % 97:02d}kq"
    return {
        "metadata": {
            "name": name, "namespace": "bench", "uid": f"5b1f0c9e-{i:04d}-4d2a-9b7e-1c3f5a7d9e{i % 100:02d}",
            "resourceVersion": str(100000 + i), "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7c9f8d6b5", "tier": "frontend"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9f8d6b5",
                                  "uid": "0a1b2c3d-4e5f-6789-abcd-ef0123456789", "controller": True,
                                  "blockOwnerDeletion": True}],
        },
        "spec": {
            "containers": [{"name": "web", "image": "registry.example.com/web:1.27.3",
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                          "limits": {"memory": "256Mi"}},
                            "terminationMessagePath": "/dev/termination-log",
                            "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "nodeName": f"node-{i % 20}",
            "serviceAccountName": "default", "schedulerName": "default-scheduler",
        },
        "status": {"phase": "Running", "podIP": f"10.244.{i // 250}.{i % 250 + 2}",
                   "hostIP": f"10.0.0.{i % 20 + 10}", "qosClass": "Burstable",
                   "startTime": "2025-01-01T00:00:05Z"},
    }

small = dict(pod(0), apiVersion="v1", kind="Pod")
def listed(i):
    # A list item trimmed like a metadata-heavy list (~195 bytes per pod, ~97 KB for 500).
    return {"metadata": {"name": f"web-{i:04d}", "namespace": "bench",
                         "uid": f"5b1f0c9e-{i:04d}-4d2a-9b7e-1c3f5a7d9e{i % 100:02d}",
                         "resourceVersion": str(100000 + i)},
            "spec": {"nodeName": f"node-{i % 20}"},
            "status": {"phase": "Running", "podIP": f"10.244.{i // 250}.{i % 250 + 2}"}}

items = [listed(i) for i in range(500)]
lst = {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "200000"}, "items": items}
cm = {"apiVersion": "v1", "kind": "ConfigMap",
      "metadata": {"name": "large", "namespace": "bench", "resourceVersion": "300000"},
      "data": {f"key-{i:04d}": ("value-%04d-" % i) * 12 for i in range(250)}}
for fname, obj in [("pod.json", small), ("podlist.json", lst), ("configmap.json", cm)]:
    with open(os.path.join(out, fname), "w") as f:
        json.dump(obj, f, separators=(",", ":"))
with open(os.path.join(out, "version.json"), "w") as f:
    json.dump({"major": "1", "minor": "32", "gitVersion": "v1.32.0-bench"}, f)
