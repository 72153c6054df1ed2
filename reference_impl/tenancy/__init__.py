"""Multi-tenancy: isolation designs (filtered, rls, schema) and tenant schedulers (fifo, bulkhead, wfq)."""
