/** Names shared by the gateway and the ingress translator. */

/** Set by Envoy from the verified token's caller claim; any client-sent copy is stripped first. */
export const CALLER_HEADER = 'x-portcullis-caller';
/** A secret Envoy adds to every request it forwards to the gateway. */
export const ORIGIN_HEADER = 'x-portcullis-origin';
/** The Streamable HTTP endpoint. */
export const MCP_PATH = '/mcp';
