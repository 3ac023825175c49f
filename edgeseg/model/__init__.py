"""Model spec (torch-free), SwinUNETR construction, trunk/head split and checkpoint loading (torch)."""
