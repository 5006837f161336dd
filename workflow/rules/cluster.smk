# stage placeholder
