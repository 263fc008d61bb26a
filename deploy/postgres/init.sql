-- One database per system (each runs its own Alembic migrations into it at start-up).
-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d).
CREATE DATABASE network;
CREATE DATABASE registry;
CREATE DATABASE platform_municipal;
CREATE DATABASE platform_jps;
CREATE DATABASE platform_insurers;
CREATE DATABASE ua_sakai;
CREATE DATABASE ua_osaka;
CREATE DATABASE ua_toyonaka;
CREATE DATABASE ua_suita;
CREATE DATABASE ua_osaka_kouiki;
CREATE DATABASE ua_jps;
