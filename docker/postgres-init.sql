-- Runs once, when the PostgreSQL volume is first created: the warehouse and Airflow's metadata
-- live in separate databases on the same server.
create user cart_recovery with password 'cart_recovery';
create database cart_recovery owner cart_recovery;
create database cart_recovery_airflow owner cart_recovery;
