"""Tests of what is deployed: the container image's contents, the Kubernetes
manifests (rendered by kustomize, validated offline), and the Prometheus rules."""
