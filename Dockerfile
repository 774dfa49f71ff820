# codash: one image for the dashboard and the GPU workers (compose.yaml picks the command).
# torch's CUDA wheels bring their own CUDA libraries; the runtime base supplies the driver glue.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CODASH_HOME=/data/codash \
    CODASH_DATA_DIR=/data/datasets

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group codash \
    && mkdir -p /data/codash /data/datasets \
    && chown -R codash:codash /data

WORKDIR /opt/codash

# Dependencies first, from pyproject alone: this layer is rebuilt only when the dependencies change.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt

COPY README.md ./
COPY trainer ./trainer
COPY jobs ./jobs
COPY app ./app
COPY codash ./codash
RUN pip install --no-deps .

USER 10001:10001
EXPOSE 8501
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]

CMD ["codash", "up", "--no-worker", "--host", "0.0.0.0"]
