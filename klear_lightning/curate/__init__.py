"""`klear curate`: the data pipeline from raw videos to split-routed, transcribed clips (Ray Data)."""
