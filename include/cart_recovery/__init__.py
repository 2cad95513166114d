"""Cart recovery: wins back abandoned e-commerce carts.

The package holds the logic that the Airflow DAGs in ``dags/`` call: the database and
environment plumbing, platform clients, channels, guards, reporting and the simulator.
"""

__version__ = "0.1.0"
