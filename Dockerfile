# mnistlab on the official PyTorch CUDA runtime image (torch, torchvision and CUDA come with the base).
#   docker build -t mnistlab .
#   docker run --gpus all --rm -v "$PWD/logs:/app/logs" -v "$PWD/data:/data" mnistlab +experiment=baseline
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

WORKDIR /app
COPY pyproject.toml README.md train.py ./
COPY configs ./configs
COPY src ./src
RUN pip install --no-cache-dir .

# Datasets live in the mounted /data (torchvision's layout or a folder of the four IDX files);
# runs are written to the mounted /app/logs.
ENV MNISTLAB_DATA=/data
VOLUME ["/data", "/app/logs"]
ENTRYPOINT ["python", "train.py"]
