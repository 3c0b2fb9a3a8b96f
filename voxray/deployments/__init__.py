"""Ray Serve: the runners behind one OpenAI-compatible FastAPI ingress.

Entry point: :func:`voxray.deployments.app.build_app` (``serve run deployments/serve.yaml``).
"""
