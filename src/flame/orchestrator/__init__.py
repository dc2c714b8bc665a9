"""Orchestrator (ORCH-*): service requests, plans against deployed state, handing policies to the SFEMC and alert rules to the CLMC."""
