# whistle-stop: one image for the orchestrator and the workers.
FROM python:3.11-slim
WORKDIR /app
# g++: the native backend compiles its engine for the CPU of the worker that runs it
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
# torch first, from PyTorch's CPU wheel index, so pip never pulls a CUDA build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} 'torch==2.13.*'
COPY pyproject.toml README.md ./
COPY worker worker
COPY orchestrator orchestrator
COPY backends backends
COPY db db
COPY contract contract
COPY executors executors
COPY cli cli
COPY native native
COPY reports reports
COPY bench bench
COPY whistle_stop whistle_stop
COPY examples examples
RUN pip install --no-cache-dir .
ENV FARM_CACHE_DIR=/cache FARM_DB_URL=/data/farm.db
ENTRYPOINT ["farm"]
