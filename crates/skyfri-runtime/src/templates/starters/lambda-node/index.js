// An AWS Lambda handler: an HTTP call arrives as an API Gateway HTTP API (2.0) event.
exports.handler = async (event, context) => {
  const name = event.body || (event.queryStringParameters || {}).name || "world";
  return {
    statusCode: 200,
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ message: `Hello, ${name}!`, requestId: context.awsRequestId }),
  };
};
