//! MCP clients through the official SDK (written next).
