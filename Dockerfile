# syntax=docker/dockerfile:1
# One image for every launcher of actionlab on a cluster: KubeRay's head, worker and submitter pods
# (platform/kuberay/rayjob.yaml) and any other place that runs `python -m actionlab ...` on Ray.
#
#   docker build -t REGISTRY/actionlab:0.1.0 .       # tag with pyproject.toml's version
#   docker push REGISTRY/actionlab:0.1.0
#
# Base: Ray's own CUDA image at the pinned Ray (2.60.0, as in pyproject.toml), Python 3.11, CUDA 13.0.
# - Ray's image rather than nvidia/cuda + Python: KubeRay expects its layout (`ray` on PATH, user `ray`
#   with uid 1000 and home /home/ray), and the autoscaler sidecar that KubeRay adds runs from this image.
# - cu130: the pinned torch 2.14.1 is built for CUDA 13.0 and installs its own CUDA 13 runtime
#   libraries (nvidia-*-cu13 wheels); a CUDA 13.0 base keeps one CUDA major in the image. GPU nodes
#   need an NVIDIA driver that supports CUDA 13.0 (>= 580).
# - py311: inside pyproject.toml's requires-python, and the Python the test suite runs on.
FROM rayproject/ray:2.60.0-py311-cu130

# Ray's image already runs as `ray`; said again so that nothing below runs as root.
USER 1000:100

# The repository is the working directory: platform/runtime_env.yaml's relative paths (`working_dir: .`,
# `py_modules: [platform/actionlab]`) resolve here, as they do in a checkout. KubeRay's submitter pod
# runs `ray job submit` in this directory, so a job ships this image's own code and nothing else.
# Made by `ray` first: a directory that WORKDIR creates can be root's, and `pip install .` writes in it.
RUN mkdir -p /home/ray/actionlab
WORKDIR /home/ray/actionlab

# Dependencies from pyproject.toml's own list (one list, no requirements.txt to drift from it), in a
# layer that is rebuilt only when pyproject.toml changes.
COPY --chown=1000:100 pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself (not editable: an image is a release), then a check that its entry point runs.
# The build's leftovers (build/, *.egg-info) are removed so that they are not shipped as working_dir.
COPY --chown=1000:100 . .
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build platform/*.egg-info ./*.egg-info \
    && python -m actionlab list > /dev/null
