"""The gallery: enrolment from photos, and (over the air) signed bundles."""
