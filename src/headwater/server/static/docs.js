// Swagger UI over this server's own OpenAPI document (no CDN).
window.ui = SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#swagger-ui"});
