/**
 * OpenTelemetry's messaging attribute names, for the bridge's producer span and the sample worker's
 * consumer span. The messaging conventions are still in development: copied here, as the
 * semantic-conventions package asks, rather than imported from its unstable `incubating` entry point.
 */
export const ATTR_MESSAGING_SYSTEM = 'messaging.system';
export const ATTR_MESSAGING_OPERATION_TYPE = 'messaging.operation.type';
export const ATTR_MESSAGING_OPERATION_NAME = 'messaging.operation.name';
/** Producer: the exchange (`''` for the default exchange). Consumer: the queue consumed. */
export const ATTR_MESSAGING_DESTINATION_NAME = 'messaging.destination.name';
export const ATTR_MESSAGING_RABBITMQ_ROUTING_KEY = 'messaging.rabbitmq.destination.routing_key';
export const ATTR_MESSAGING_RABBITMQ_DELIVERY_TAG = 'messaging.rabbitmq.message.delivery_tag';
/** The RPC's correlation id. */
export const ATTR_MESSAGING_CONVERSATION_ID = 'messaging.message.conversation_id';
export const ATTR_MESSAGING_MESSAGE_ID = 'messaging.message.id';
export const ATTR_MESSAGING_BODY_SIZE = 'messaging.message.body.size';
/** How the call ended, in the RPC core's words (`reply`, `timeout`, `unroutable`, ...), or the worker's. */
export const ATTR_OUTCOME = 'amqp_rpc_bridge.outcome';
