# The project's image: Airflow 3, dbt, Cosmos and the cart_recovery package, from the lock file.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    CART_RECOVERY_HOME=/opt/cart-recovery \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    DO_NOT_TRACK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends curl libpq5 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 50000 airflow \
 && mkdir -p /opt/cart-recovery/.airflow \
 && chown -R airflow /opt/cart-recovery

WORKDIR /opt/cart-recovery
COPY requirements.lock ./
RUN pip install uv==0.13.8 && uv pip install --system -r requirements.lock

COPY pyproject.toml README.md ./
COPY include/ include/
RUN uv pip install --system --no-deps -e .

COPY dags/ dags/
COPY plugins/ plugins/
COPY config/ config/
COPY --chown=airflow dbt_project/ dbt_project/

USER airflow
# The manifest Cosmos renders from; parsing needs no database connection.
RUN dbt parse --project-dir dbt_project --profiles-dir dbt_project

EXPOSE 8080 8081
