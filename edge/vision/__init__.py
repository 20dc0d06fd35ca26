"""From pixels to a face template: scan (which windows to look at) → detect → landmarks
→ align → quality → embed. Each module one stage; none knows about identities."""
