"""What every pattern's service face shares: errors, middleware, pools, metrics, lab-mode faults, auth."""
