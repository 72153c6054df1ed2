"""Sagas: a checkout across inventory, payments and shipping, all done or all undone under crashes."""
